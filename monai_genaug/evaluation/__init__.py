# Copyright (c) monai_genaug contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""One evaluation protocol for every benchmark: a tidy per-case / per-seed results table with bootstrap intervals
and paired differences (:mod:`.statistics`), the downstream-effect harness for synthetic augmentation and the
learner's label curve (:mod:`.downstream`, :mod:`.learners`), independent oracles (:mod:`.oracles`), the JSON
envelope every benchmark writes (:mod:`.results`) and the report generator
(``python -m monai_genaug.evaluation.report benchmarks/results [--check]``). Nothing here imports
``monai_genaug.methods``.
"""

from monai_genaug.evaluation.downstream import (
    DEFAULT_SEEDS,
    default_learner,
    evaluate_downstream,
    evaluate_training_sets,
    label_curve,
    label_curve_rises,
    metric_name,
    variant_summaries,
)
from monai_genaug.evaluation.learners import (
    GlobalPoolCNN,
    case_scores,
    classification_learner,
    predict,
    segmentation_learner,
    train_learner,
)
from monai_genaug.evaluation.oracles import Oracle
from monai_genaug.evaluation.results import (
    SCHEMA,
    BenchmarkTimer,
    environment,
    is_complete,
    merge_results,
    read_results,
    write_json_atomic,
    write_results,
)
from monai_genaug.evaluation.statistics import (
    ResultsTable,
    bootstrap_interval,
    paired_difference,
    percentile_interval,
    summarize,
)

__all__ = [
    "DEFAULT_SEEDS",
    "SCHEMA",
    "BenchmarkTimer",
    "GlobalPoolCNN",
    "Oracle",
    "ResultsTable",
    "bootstrap_interval",
    "case_scores",
    "classification_learner",
    "default_learner",
    "environment",
    "evaluate_downstream",
    "evaluate_training_sets",
    "is_complete",
    "label_curve",
    "label_curve_rises",
    "merge_results",
    "metric_name",
    "paired_difference",
    "percentile_interval",
    "predict",
    "read_results",
    "segmentation_learner",
    "summarize",
    "train_learner",
    "variant_summaries",
    "write_json_atomic",
    "write_results",
]
