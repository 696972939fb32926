# Airflow with everything fruitflow's tasks need. The Spark driver runs here (client deploy mode: Spark's
# standalone master runs Python applications in client mode only), so the image holds the jobs' whole
# pinned set, the same requirements.in and constraints.txt as `make setup` and the Spark nodes:
# pyspark, OpenCV, ONNX Runtime, TensorFlow (to materialise a model), scikit-learn, matplotlib, ...
FROM apache/airflow:3.3.2-python3.11
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless curl \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /opt/hadoop-aws && chown airflow /opt/hadoop-aws
USER airflow
COPY requirements.in constraints.txt /tmp/fruitflow/
RUN pip install --no-cache-dir -r /tmp/fruitflow/requirements.in -c /tmp/fruitflow/constraints.txt \
 && pip install --no-cache-dir --no-deps --force-reinstall "$(grep -E '^pyspark==' /tmp/fruitflow/constraints.txt)"
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
