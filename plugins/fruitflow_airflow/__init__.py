"""fruitflow's Airflow pieces: how a step is submitted and the operator that returns its manifest."""
