"""Classifying one red cell: the networks, the exported learner's preprocessing, test-time views,
Grad-CAM and the predictor the service and the commands call."""
