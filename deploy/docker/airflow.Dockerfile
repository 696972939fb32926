# The Airflow host: the scheduler, the api-server (with fruitflow's plugin) and the Spark drivers, which run
# here in client mode (Spark's standalone master runs Python applications in client mode only).
# fruitflow is installed as a package with the Airflow host's extra, pinned by constraints.txt: its plugin
# registers through the `airflow.plugins` entry point, so nothing is mounted into Airflow's plugins folder.
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/hadoop-aws /opt/fruitflow/dist /opt/fruitflow/spark-conf \
 && chown airflow:0 /opt/hadoop-aws /opt/fruitflow /opt/fruitflow/dist /opt/fruitflow/spark-conf \
 && chmod g+rwx /opt/fruitflow/spark-conf  # any AIRFLOW_UID runs with group 0, as Airflow's image expects
USER airflow
# airflow,resnet50 adds TensorFlow and tf2onnx, to materialise ResNet50 (the backbone Param resnet50, or auto)
ARG FRUITFLOW_EXTRAS=airflow
COPY --chown=airflow pyproject.toml README.md constraints.txt /tmp/fruitflow/
COPY --chown=airflow fruitflow /tmp/fruitflow/fruitflow
COPY --chown=airflow plugins /tmp/fruitflow/plugins
COPY --chown=airflow spark_jobs /tmp/fruitflow/spark_jobs
RUN pip install --no-cache-dir "/tmp/fruitflow[${FRUITFLOW_EXTRAS}]" -c /tmp/fruitflow/constraints.txt
# The jobs spark-submit runs (FRUITFLOW_JOBS_DIR) and the zip it ships to the executors (FRUITFLOW_PY_FILES),
# made here from the same sources, so no container writes into the host's checkout.
COPY --chown=airflow spark_jobs /opt/fruitflow/spark_jobs
RUN cd /opt/fruitflow && python -m zipfile -c dist/fruitflow_jobs.zip spark_jobs && rm -rf /tmp/fruitflow
# hadoop-aws and its dependencies on the driver's class path (FRUITFLOW_SPARK_JARS, the same folder as
# in the Spark image), resolved once at build time with the Ivy that pyspark ships, as the local stack
# does: no --packages download and no 0.7 GB copy per application.
# With them, Spark's S3A committer binding (one jar, no dependencies): FRUITFLOW_S3A_COMMITTER=magic.
ARG HADOOP_AWS_VERSION=3.5.0
ARG SPARK_HADOOP_CLOUD_VERSION=4.0.0
RUN ivy="$(python -c 'import glob, pyspark, os; print(glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "ivy-*.jar"))[0])')" \
 && java -cp "$ivy" org.apache.ivy.Main -dependency org.apache.hadoop hadoop-aws "$HADOOP_AWS_VERSION" -confs default -types jar \
      -cache /tmp/ivy -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]" \
 && java -cp "$ivy" org.apache.ivy.Main -dependency org.apache.spark spark-hadoop-cloud_2.13 "$SPARK_HADOOP_CLOUD_VERSION" \
      -confs default -types jar -notransitive \
      -cache /tmp/ivy -retrieve "/opt/hadoop-aws/[organisation]_[artifact]-[revision](-[classifier]).[ext]" \
 && rm -rf /tmp/ivy
