"""What the personalization and same-budget benchmarks read from a report (no simulation runs here)."""

from benchmarks.centralized_budget import federated_examples
from benchmarks.personalization import groups, scenario_goals

CONCEPT_SHIFT_FINAL = {
    "clients_final_evaluation": 30, "accuracy_global_clients": 0.65, "accuracy_personalized": 0.776,
    "clients_shifted": 5, "accuracy_global_shifted": 0.173, "accuracy_personalized_shifted": 0.811,
    "clients_unshifted": 25, "accuracy_global_unshifted": 0.745, "accuracy_personalized_unshifted": 0.741,
}
DIRICHLET_FINAL = {"clients_final_evaluation": 30, "accuracy_global_clients": 0.70, "accuracy_personalized": 0.72}


def test_concept_shift_groups_and_goals():
    rows = {row["group"]: row for row in groups(CONCEPT_SHIFT_FINAL)}
    assert set(rows) == {"shifted", "others", "all"}
    assert rows["shifted"]["points"] == 63.8 and rows["shifted"]["clients"] == 5
    assert rows["others"]["points"] == -0.4
    met = {g["goal"].split(":")[1].strip().split()[0]: g["met"] for g in scenario_goals("cs", groups(CONCEPT_SHIFT_FINAL))}
    assert met == {"shifted": True, "others": False}  # -0.4 points is past the -0.3 allowed


def test_without_shift_every_client_counts_as_the_others():
    rows = groups(DIRICHLET_FINAL)
    assert [row["group"] for row in rows] == ["all"]
    (only,) = scenario_goals("dirichlet", rows)
    assert only["met"] and "+2.0" in only["measured"]


def test_missing_personal_accuracy_gives_no_rows():
    assert groups({"clients_final_evaluation": 30, "accuracy_global_clients": 0.7}) == []


def test_federated_examples_sum_the_rounds():
    report = {"rounds": [{"examples_trained": 1058}, {"examples_trained": 1040}, {"examples_trained": None}, {}]}
    assert federated_examples(report) == 2098
