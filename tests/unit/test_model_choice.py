"""The run's model when the DAG's Param says `auto`: decided where the DAG runs, with the reason."""

from fruitflow_airflow.tasks import choose_model
from spark_jobs.common.config import AUTO, Config
from spark_jobs.common.models import resnet50_imagenet_available


def test_a_named_backbone_is_used_as_asked():
    chosen = choose_model("efficientnet_lite0", "imagenet", Config(), lambda uri: False)
    assert chosen == {"backbone": "efficientnet_lite0", "weights": "imagenet", "reason": "asked for"}


def test_auto_takes_resnet50_imagenet_only_where_its_weights_can_be_had():
    online = resnet50_imagenet_available()  # this machine as it is: offline here and in CI
    asked = []
    offline_choice = choose_model(AUTO, "imagenet", Config(), lambda uri: asked.append(uri) or False)
    assert offline_choice["backbone"] == ("resnet50" if online else "efficientnet_lite0")
    assert offline_choice["weights"] == "imagenet" and offline_choice["reason"].startswith("auto: ")
    if not online:
        assert asked == [f"s3a://fruitflow-models/resnet50/{asked[0].split('/')[-2]}/model.onnx"]
        assert asked[0].split("/")[-2].startswith("imagenet-keras")
    stored = choose_model(AUTO, "imagenet", Config(), lambda uri: True)  # materialised by an earlier run
    assert stored["backbone"] == "resnet50" and stored["weights"] == "imagenet"


def test_auto_with_other_weights_is_the_reference_architecture():
    chosen = choose_model(AUTO, "random", Config(), lambda uri: False)
    assert (chosen["backbone"], chosen["weights"]) == ("resnet50", "random")


def test_auto_is_the_one_default_and_a_step_is_always_given_its_backbone():
    """One meaning for the default: `auto`, in the settings as in the DAG's Param; below the DAG nothing
    falls back to a backbone of its own."""
    import pytest

    from spark_jobs import featurize

    assert Config().backbone == AUTO
    with pytest.raises(ValueError, match="list_new"):
        Config().models_uri  # no models folder named `auto`
    with pytest.raises(SystemExit):  # --backbone is required
        featurize.arg_parser().parse_args(["--run-id", "r", "--keys", "s3a://fruitflow-features/runs/r/new.jsonl"])
    assert featurize.arg_parser().parse_args(["--run-id", "r", "--keys", "s3a://b/x", "--backbone",
                                              "efficientnet_lite0"]).backbone == "efficientnet_lite0"
