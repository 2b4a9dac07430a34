"""Hand-made result rows (as ``results.read_rows`` returns them: strings) for table and gate
tests: one network, per-trial accuracies and sharpness values chosen by the test."""


def make_rows(*, sb_test, lb_test, sb_sharp, lb_sharp, sb_train=None, lb_train=None,
              distance_ratio=None, model="F1", dataset="fashion_mnist", epsilon=1e-3,
              solver="lbfgsb"):
    """Rows of len(sb_test) trials; accuracies are fractions, sharpness full-space values,
    distance ratios per trial (default 4.0: SB 4.0 from x0, LB 1.0)."""
    trials = len(sb_test)
    sb_train = sb_train or [0.999] * trials
    lb_train = lb_train or [0.9995] * trials
    distance_ratio = distance_ratio or [4.0] * trials
    runs, pairs, sharp = [], [], []
    for trial in range(trials):
        for regime, train_acc, test_acc, value in (
                ("SB", sb_train[trial], sb_test[trial], sb_sharp[trial]),
                ("LB", lb_train[trial], lb_test[trial], lb_sharp[trial])):
            run_id = f"{model}-{regime}-{trial}"
            runs.append({"run_id": run_id, "model": model, "dataset": dataset,
                         "regime": regime, "train_accuracy": str(train_acc),
                         "test_accuracy": str(test_acc), "device_kind": "CPU: Test CPU",
                         "precision": "float32", "tf_version": "2.21.0"})
            sharp.append({"run_id": run_id, "model": model, "dataset": dataset,
                          "regime": regime, "seed": str(trial), "subspace": "full",
                          "subspace_dim": "",
                          "solver": solver, "epsilon": str(epsilon), "sharpness": str(value),
                          "subspace_seed": "", "max_iter": "10", "eval_examples": "1000",
                          "eval_seed": str(trial), "eval_batch_size": "500"})
        pairs.append({"gap_id": "g", "model": model, "dataset": dataset, "trial": str(trial),
                      "seed": str(trial), "sb_run_id": f"{model}-SB-{trial}",
                      "lb_run_id": f"{model}-LB-{trial}",
                      "test_gap_pp": str(100 * (sb_test[trial] - lb_test[trial])),
                      "sb_distance": str(distance_ratio[trial]), "lb_distance": "1.0",
                      "distance_ratio": str(distance_ratio[trial])})
    return runs, pairs, sharp
