"""The numbers Keskar et al. (ICLR 2017) published, for side-by-side comparison.

Accuracies are percentages, sharpness values phi as defined by Metric 2.1, each as
(mean, std) over the paper's 5 trials. Table 3 is the full space, Table 4 a random subspace of
dimension 100; both at eps 1e-3 and 5e-4 with 10 iterations of L-BFGS-B.
"""

from __future__ import annotations

PAPER_TRIALS = 5
PAPER_SUBSPACE_DIM = 100
PAPER_EPSILONS = (1e-3, 5e-4)

# Table 2: accuracy (%) of SB and LB, keyed by (network, split, regime).
TABLE2 = {
    "F1": {("train", "SB"): (99.66, 0.05), ("train", "LB"): (99.92, 0.01),
           ("test", "SB"): (98.03, 0.07), ("test", "LB"): (97.81, 0.07)},
    "F2": {("train", "SB"): (99.99, 0.03), ("train", "LB"): (98.35, 2.08),
           ("test", "SB"): (64.02, 0.2), ("test", "LB"): (59.45, 1.05)},
    "C1": {("train", "SB"): (99.89, 0.02), ("train", "LB"): (99.66, 0.2),
           ("test", "SB"): (80.04, 0.12), ("test", "LB"): (77.26, 0.42)},
    "C2": {("train", "SB"): (99.99, 0.04), ("train", "LB"): (99.99, 0.01),
           ("test", "SB"): (89.24, 0.12), ("test", "LB"): (87.26, 0.07)},
    "C3": {("train", "SB"): (99.56, 0.44), ("train", "LB"): (99.88, 0.30),
           ("test", "SB"): (49.58, 0.39), ("test", "LB"): (46.45, 0.43)},
    "C4": {("train", "SB"): (99.10, 1.23), ("train", "LB"): (99.57, 1.84),
           ("test", "SB"): (63.08, 0.5), ("test", "LB"): (57.81, 0.17)},
}

# Tables 3 (full space) and 4 (subspace p = 100): sharpness keyed by (epsilon, regime).
TABLE3 = {
    "F1": {(1e-3, "SB"): (1.23, 0.83), (1e-3, "LB"): (205.14, 69.52),
           (5e-4, "SB"): (0.61, 0.27), (5e-4, "LB"): (42.90, 17.14)},
    "F2": {(1e-3, "SB"): (1.39, 0.02), (1e-3, "LB"): (310.64, 38.46),
           (5e-4, "SB"): (0.90, 0.05), (5e-4, "LB"): (93.15, 6.81)},
    "C1": {(1e-3, "SB"): (28.58, 3.13), (1e-3, "LB"): (707.23, 43.04),
           (5e-4, "SB"): (7.08, 0.88), (5e-4, "LB"): (227.31, 23.23)},
    "C2": {(1e-3, "SB"): (8.68, 1.32), (1e-3, "LB"): (925.32, 38.29),
           (5e-4, "SB"): (2.07, 0.86), (5e-4, "LB"): (175.31, 18.28)},
    "C3": {(1e-3, "SB"): (29.85, 5.98), (1e-3, "LB"): (258.75, 8.96),
           (5e-4, "SB"): (8.56, 0.99), (5e-4, "LB"): (105.11, 13.22)},
    "C4": {(1e-3, "SB"): (12.83, 3.84), (1e-3, "LB"): (421.84, 36.97),
           (5e-4, "SB"): (4.07, 0.87), (5e-4, "LB"): (109.35, 16.57)},
}

TABLE4 = {
    "F1": {(1e-3, "SB"): (0.11, 0.00), (1e-3, "LB"): (9.22, 0.56),
           (5e-4, "SB"): (0.05, 0.00), (5e-4, "LB"): (9.17, 0.14)},
    "F2": {(1e-3, "SB"): (0.29, 0.02), (1e-3, "LB"): (23.63, 0.54),
           (5e-4, "SB"): (0.05, 0.00), (5e-4, "LB"): (6.28, 0.19)},
    "C1": {(1e-3, "SB"): (2.18, 0.23), (1e-3, "LB"): (137.25, 21.60),
           (5e-4, "SB"): (0.71, 0.15), (5e-4, "LB"): (29.50, 7.48)},
    "C2": {(1e-3, "SB"): (0.95, 0.34), (1e-3, "LB"): (25.09, 2.61),
           (5e-4, "SB"): (0.31, 0.08), (5e-4, "LB"): (5.82, 0.52)},
    "C3": {(1e-3, "SB"): (17.02, 2.20), (1e-3, "LB"): (236.03, 31.26),
           (5e-4, "SB"): (4.03, 1.45), (5e-4, "LB"): (86.96, 27.39)},
    "C4": {(1e-3, "SB"): (6.05, 1.13), (1e-3, "LB"): (72.99, 10.96),
           (5e-4, "SB"): (1.89, 0.33), (5e-4, "LB"): (19.85, 4.12)},
}

# The paper's distance ratio ||x_SB - x0|| / ||x_LB - x0|| lay in this range.
DISTANCE_RATIO_RANGE = (3.0, 10.0)
