"""learners layer."""
