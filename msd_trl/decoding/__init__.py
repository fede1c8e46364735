"""The decoding layer: the helpers that evaluation answers, teacher text (`msd_trl.generation`) and on-policy
rollouts (`msd_trl.trainer`) share, one module per concern and nothing of ours imported:

- `padding`: left-padded prompt batches, right-padded completions, re-padding several batches into one;
- `grouping`: length-grouped batches (rows of similar length share a generate call);
- `stops`: the stop ids of a model, the first stop of each completion, the completion mask;
- `resumable`: the append-only JSON-lines file a killed generation resumes from;
- `speed`: CPU decode threads and the merged LoRA adapter for a generate call.
"""

from .grouping import length_grouped
from .padding import concat_padded, left_padded, pad
from .resumable import JsonLinesLog
from .speed import check_adapter_mergeable, check_thread_count, decode_threads, merged_adapter
from .stops import completion_mask, cut_at_stop, ends_with_stop, first_stop, stop_token_ids

__all__ = [
    "JsonLinesLog",
    "check_adapter_mergeable",
    "check_thread_count",
    "completion_mask",
    "concat_padded",
    "cut_at_stop",
    "decode_threads",
    "ends_with_stop",
    "first_stop",
    "left_padded",
    "length_grouped",
    "merged_adapter",
    "pad",
    "stop_token_ids",
]
