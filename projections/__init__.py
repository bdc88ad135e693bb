"""What is true: pure folds over events, and SQL views for audit."""
