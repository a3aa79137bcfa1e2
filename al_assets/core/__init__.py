"""Framework-free core: plain Python, torch and pyarrow. Nothing here imports Dagster."""
