"""Offline training and evaluation: temporal splits, trainers, metrics, publishing."""
