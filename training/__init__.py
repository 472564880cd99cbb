"""Training subpackage: import data, train (feature extraction / fine tuning), evaluate, export."""
