# Airflow with what fruitflow's tasks need: the amazon and apache-spark providers, and spark-submit
# (pyspark's distribution and a Java 17 runtime) to hand the Spark steps to the standalone master.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/*
USER airflow
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
      "apache-airflow==3.3.2" apache-airflow-providers-amazon apache-airflow-providers-apache-spark boto3 \
 && pip install --no-cache-dir --no-deps --force-reinstall \
      "$(grep -E '^pyspark==' /tmp/constraints.txt)"
