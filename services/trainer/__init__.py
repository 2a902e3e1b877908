"""Training side: data set tooling, exploration, training, evaluation, MLflow, publishing."""
