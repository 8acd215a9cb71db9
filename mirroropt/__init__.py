"""mirroropt: learned mirror descent for meta-learning."""
