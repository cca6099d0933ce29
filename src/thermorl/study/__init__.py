"""Evaluation and studies: held-out accuracy, benchmark avg@k / pass@k, the controller x seed comparison."""
