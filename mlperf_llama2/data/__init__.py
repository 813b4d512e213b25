"""The benchmark's data: OpenOrca preprocessing, the processed dataset, and ROUGE scoring."""
