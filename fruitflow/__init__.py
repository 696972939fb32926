"""fruitflow's own tooling: the local stack, the demo, the quality and benchmark commands, and the
`fruitflow` command line that the Makefile calls. The pipeline itself is `spark_jobs` (Spark) and
`fruitflow_airflow` (the Airflow plugin) beside it."""
