"""TF_CONFIG's roles as Kubeflow's TFJob, Vertex AI and AI Platform Training set them (no TensorFlow
needed). The fixtures copy the shape their documentation and operator code give: Kubeflow's
training-operator writes {"cluster", "task", "environment": "cloud"} with replica names
<job>-<role>-<i>.<namespace>.svc:2222; AI Platform adds "job" (the TrainingInput) and, in a
tuning job, "task.trial", and names its chief `master` on its older runtimes; its cluster never
lists an evaluator (an evaluator is not part of the training cluster)."""

import json

import pytest

from resnet_train.errors import ConfigError
from resnet_train.runtime import cluster


def kubeflow(role, index, roles=("chief", "worker", "worker")):
    """What Kubeflow's training-operator sets in a TFJob `resnet` of namespace `ml`."""
    jobs = {}
    for r in roles:
        jobs.setdefault(r, []).append(f"resnet-{r}-{len(jobs.get(r, []))}.ml.svc:2222")
    return {"cluster": jobs, "task": {"type": role, "index": index}, "environment": "cloud"}


def ai_platform(role, index, ps=False):
    """What AI Platform Training sets with a `master` chief (runtime 1.x naming), as in its docs."""
    jobs = {
        "master": ["cmle-training-master-a1b2c3-0:2222"],
        "worker": ["cmle-training-worker-a1b2c3-0:2222", "cmle-training-worker-a1b2c3-1:2222"],
    }
    if ps:
        jobs["ps"] = ["cmle-training-ps-a1b2c3-0:2222"]
    return {
        "cluster": jobs,
        "environment": "cloud",
        "task": {"type": role, "index": index, "trial": "1"},
        "job": {"scale_tier": "CUSTOM", "master_type": "n1-standard-8", "worker_count": "2", "region": "us-central1"},
    }


def vertex(role, index):
    """Vertex AI: worker pool 0 is the chief, pool 1 the workers, pool 3 an evaluator (not in the cluster)."""
    jobs = {"chief": ["workerpool0-abc-0:2222"], "worker": ["workerpool1-abc-0:2222", "workerpool1-abc-1:2222"]}
    return {"cluster": jobs, "environment": "cloud", "task": {"type": role, "index": index}, "job": {}}


def use(monkeypatch, conf):
    monkeypatch.setenv("TF_CONFIG", json.dumps(conf))


@pytest.mark.parametrize("make", [kubeflow, vertex], ids=["kubeflow", "vertex"])
def test_chief_and_workers_as_today(monkeypatch, make):
    use(monkeypatch, make("chief", 0))
    assert cluster.task() == ("chief", 0, 3) and cluster.is_chief() and cluster.worker_suffix() == ""
    use(monkeypatch, make("worker", 0))  # worker 0 is not the chief when there is one
    assert cluster.task() == ("worker", 0, 3) and not cluster.is_chief() and cluster.worker_suffix() == "_worker0"
    use(monkeypatch, make("worker", 1))
    assert not cluster.is_chief() and cluster.worker_suffix() == "_worker1"


def test_master_is_the_chief_and_counts_as_a_worker(monkeypatch):
    use(monkeypatch, ai_platform("master", 0))
    assert cluster.task() == ("chief", 0, 3)  # the master trains: 1 + 2 workers
    assert cluster.is_chief() and cluster.has_chief() and cluster.worker_suffix() == ""
    use(monkeypatch, ai_platform("worker", 0))
    assert cluster.task() == ("worker", 0, 3) and not cluster.is_chief() and cluster.worker_suffix() == "_worker0"


def test_a_tfjob_master_replica_is_the_chief_too(monkeypatch):
    use(monkeypatch, kubeflow("master", 0, roles=("master", "worker")))
    assert cluster.is_chief() and cluster.task() == ("chief", 0, 2)


def test_the_spec_handed_to_tensorflow_names_the_master_chief(monkeypatch):
    """TensorFlow's strategy refuses a `master` job: the spec our resolver hands it has a chief."""
    use(monkeypatch, ai_platform("master", 0))
    assert cluster.spec() == {
        "cluster": {
            "chief": ["cmle-training-master-a1b2c3-0:2222"],
            "worker": ["cmle-training-worker-a1b2c3-0:2222", "cmle-training-worker-a1b2c3-1:2222"],
        },
        "task": {"type": "chief", "index": 0},
    }


NO_PS = (
    "this trainer has no parameter servers or side-car evaluators (every task trains and evaluates): "
    "start only chief/master and worker tasks"
)


@pytest.mark.parametrize(
    "conf,role,what",
    [
        (ai_platform("ps", 0, ps=True), "ps", "a parameter server"),
        (ai_platform("worker", 1, ps=True), "ps", "a parameter server"),  # a worker whose cluster holds one
        (kubeflow("ps", 0, roles=("chief", "worker", "ps")), "ps", "a parameter server"),
        (vertex("evaluator", 0), "evaluator", "a side-car evaluator"),
        (kubeflow("evaluator", 0, roles=("chief", "worker", "evaluator")), "evaluator", "a side-car evaluator"),
    ],
    ids=["ai-platform ps", "ai-platform worker beside a ps", "kubeflow ps", "vertex evaluator", "kubeflow evaluator"],
)
def test_ps_and_evaluator_are_refused_in_one_line(monkeypatch, conf, role, what):
    use(monkeypatch, conf)
    for call in (cluster.task, cluster.is_chief, cluster.worker_suffix):
        with pytest.raises(ConfigError) as refused:
            call()
        assert str(refused.value) == f"TF_CONFIG has a task of role '{role}' ({what}): {NO_PS}"


@pytest.mark.parametrize(
    "conf,message",
    [
        (
            {"cluster": {"chief": ["a:1"], "master": ["b:1"]}, "task": {"type": "chief", "index": 0}},
            "TF_CONFIG has both a 'chief' and a 'master': give the cluster one chief",
        ),
        (
            {"cluster": {"chief": ["a:1", "b:1"]}, "task": {"type": "chief", "index": 0}},
            "TF_CONFIG lists 2 chief tasks: give the cluster one chief",
        ),
        (
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "trainer", "index": 0}},
            "TF_CONFIG has a task type 'trainer': the types are chief (or master) and worker",
        ),
        (
            {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}},
            "TF_CONFIG's task (worker 2) is not in its cluster, which has 2",
        ),
        (
            {"cluster": {"worker": ["a:1"]}, "task": {"type": "master", "index": 0}},
            "TF_CONFIG's task (master 0) is not in its cluster, which has 0",
        ),
    ],
    ids=["chief and master", "two chiefs", "unknown role", "index past the cluster", "master not in the cluster"],
)
def test_a_cluster_tensorflow_would_refuse_is_one_line(monkeypatch, conf, message):
    use(monkeypatch, conf)
    with pytest.raises(ConfigError) as refused:
        cluster.task()
    assert str(refused.value) == message
