"""Every setting of the course's engine, and every plugin, next to the nearest one in vLLM, SGLang and Hugging Face TGI.

Names were read in each project's own source: vLLM ``vllm/config/scheduler.py``, ``cache.py``, ``speculative.py``,
``parallel.py``, ``attention.py`` and ``vllm/engine/arg_utils.py`` (CLI flags are the field names with dashes);
SGLang ``python/sglang/srt/server_args.py`` and ``python/sglang/srt/managers/scheduler.py``; TGI ``launcher/src/main.rs``, ``backends/v3/src/backend.rs`` and
``server/text_generation_server/models/globals.py`` (TGI is in maintenance mode). "none" means nothing
corresponds. ``tests/test_production.py`` fails when an ``EngineConfig`` field or a plugin has no row, so a new
setting must be placed here.

How each engine spends a step differs, so a "token budget" is not the same knob everywhere. vLLM V1 has one budget,
``max_num_batched_tokens``: it schedules the running queue first (decodes and unfinished prompt chunks), then
admits waiting requests with what is left (``vllm/v1/core/sched/scheduler.py``, ``VLLM_V1_SCHEDULER``). The
"decodes before any prefill" rule in vLLM's optimization guide describes the V0 chunked-prefill scheduler. SGLang
runs a prefill batch first whenever one can be formed and decodes otherwise (``get_next_batch_to_run``), so by
default a batch is prefill-only or decode-only; ``enable_mixed_chunk`` (off by default) lets a chunked prefill
batch carry the running decodes. Its budgets are ``max_prefill_tokens`` (tokens of one prefill batch, 16384 by
default), ``chunked_prefill_size`` (tokens of one chunk) and ``max_running_requests``. Priority is opposite too:
vLLM runs *smaller* ``priority`` values first; SGLang needs ``enable_priority_scheduling`` and then runs *larger*
values first unless ``schedule_low_priority_values_first`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

VLLM_SOURCES = (
    "https://github.com/vllm-project/vllm/blob/main/vllm/config/scheduler.py",
    "https://github.com/vllm-project/vllm/blob/main/vllm/v1/core/sched/scheduler.py",
    "https://docs.vllm.ai/en/latest/features/quantization/quantized_kvcache/",
    "https://github.com/vllm-project/vllm/blob/main/vllm/config/cache.py",
    "https://docs.vllm.ai/en/stable/configuration/optimization/",
)
SGLANG_SOURCE = "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/server_args.py"
SGLANG_SCHEDULER_SOURCE = "https://github.com/sgl-project/sglang/blob/main/python/sglang/srt/managers/scheduler.py"
VLLM_V1_SCHEDULER = VLLM_SOURCES[1]
TGI_SOURCE = "https://github.com/huggingface/text-generation-inference/blob/main/launcher/src/main.rs"
TGI_CHUNKING_SOURCE = (
    "https://github.com/huggingface/text-generation-inference/blob/main/server/text_generation_server/models/globals.py"
)


@dataclass(frozen=True)
class Knob:
    ours: str  # an EngineConfig field or a plugin class name
    kind: str  # "EngineConfig" or "plugin"
    meaning: str
    vllm: str
    sglang: str
    tgi: str
    note: str = ""


# fmt: off
KNOBS: tuple[Knob, ...] = (
    Knob("max_tokens_per_step", "EngineConfig", "token budget of one step",
         "max_num_batched_tokens (one budget: running requests first, then waiting ones)",
         "max_prefill_tokens (tokens of one prefill batch; decodes are not counted) + chunked_prefill_size "
         "(tokens of one chunk); enable_mixed_chunk (off by default) adds running decodes to a prefill batch",
         "max_batch_prefill_tokens (prefill) / max_batch_total_tokens (all tokens in a batch)",
         "vLLM V1 spends one budget on running and new requests together, as this engine does; SGLang runs a "
         "prefill batch first when it can form one, and a decode batch otherwise"),
    Knob("prefill_chunk_size", "EngineConfig", "most prompt tokens one request gets per step",
         "enable_chunked_prefill + long_prefill_token_threshold (cap per long prompt; 0 = no cap)",
         "chunked_prefill_size (-1 disables chunking)",
         "PREFILL_CHUNKING environment variable (on by default in v3 where the model supports it; chunks fill "
         "max_batch_prefill_tokens)"),
    Knob("max_running", "EngineConfig", "most requests holding KV at once",
         "max_num_seqs", "max_running_requests",
         "max_batch_size (max_concurrent_requests caps waiting and running requests together)"),
    Knob("kv_layout", "EngineConfig", "dense (one region per request) or paged blocks",
         "none (always paged)", "none (always paged: token-to-KV pool)", "none (paged with flash/paged attention)"),
    Knob("block_size", "EngineConfig", "tokens per KV block", "block_size", "page_size", "none (set by the attention backend)"),
    Knob("num_blocks", "EngineConfig", "size of the KV pool",
         "gpu_memory_utilization (pool = the rest after weights); num_gpu_blocks_override",
         "mem_fraction_static; max_total_tokens", "cuda_memory_fraction; max_batch_total_tokens",
         "real engines size the pool from free GPU memory; cblab_teach.production.max_kv_tokens does the same sum"),
    Knob("policy", "EngineConfig", "fcfs or priority order for admission and preemption",
         "scheduling_policy ('fcfs' | 'priority'; smaller priority values first)",
         "enable_priority_scheduling (larger priority values first unless schedule_low_priority_values_first); "
         "schedule_policy (fcfs, lpm, ...) orders the waiting queue",
         "none (FIFO queue)", "SGLang's lpm (longest prefix match) orders by cache hits"),
    Knob("attention", "EngineConfig", "segmented per-request attention or one ragged mask (the reference)",
         "--attention-backend (older versions: VLLM_ATTENTION_BACKEND)", "attention_backend",
         "ATTENTION environment variable", "the course's two paths are readable references, not fast kernels"),
    Knob("kv_read", "EngineConfig", "read keys by an indexed gather through the block table, or copy blocks first",
         "none (the paged kernel reads blocks in place)", "none", "none",
         "this engine's block_table read gathers every key into a new tensor per layer and step"),
    Knob("eos_token_id", "EngineConfig", "token that ends a request",
         "model's generation_config; per request SamplingParams(stop_token_ids, ignore_eos)",
         "per request sampling params (stop_token_ids, ignore_eos)", "per request parameters (stop)"),
    Knob("device", "EngineConfig", "where tensors live",
         "none (chosen by the platform; the old device option is deprecated)", "device", "none"),
    Knob("preemption", "EngineConfig", "admit optimistically; when the pool runs out, evict and recompute or swap",
         "always on; recompute (V1; the V0 engine also had swap)", "always on (retraction)", "none",
         "swap keeps the evicted KV in host memory and copies it back; recompute redoes the prefill"),
    Knob("num_host_blocks", "EngineConfig", "capacity of the host pool that swap preemption parks KV in",
         "swap_space (GiB of CPU memory per GPU, V0 engine)", "none", "none",
         "a victim that does not fit the host pool is recomputed instead"),
    Knob("enable_prefix_caching", "EngineConfig", "share full KV blocks of identical prefixes",
         "enable_prefix_caching (automatic prefix caching, hash of full blocks; on by default in V1)",
         "on by default: RadixAttention (disable_radix_cache turns it off)",
         "PREFIX_CACHING environment variable (on by default with flashinfer attention)",
         "only whole blocks are shared in vLLM and here; SGLang's radix tree matches a prefix token by token, "
         "in pages of page_size tokens"),
    Knob("speculative", "EngineConfig", "None, n-gram prompt lookup, or a draft model",
         "speculative_config {'method': 'ngram' or a draft model, ...}",
         "speculative_algorithm (NGRAM, STANDALONE, EAGLE, ...)", "speculate (n-gram or Medusa heads)"),
    Knob("num_speculative_tokens", "EngineConfig", "tokens proposed per step",
         "speculative_config['num_speculative_tokens']", "speculative_num_draft_tokens", "speculate"),
    Knob("ngram_size", "EngineConfig", "length of the n-gram matched in the prompt",
         "speculative_config['prompt_lookup_min' / 'prompt_lookup_max']",
         "speculative_ngram_min_match_window_size / speculative_ngram_max_match_window_size", "none"),
    Knob("keep_records", "EngineConfig", "keep only the last K per-step records (a long-running server)",
         "none (keeps no per-step history; stat loggers aggregate per interval; --disable-log-stats)",
         "none (log_stats_interval; --disable-log-stats)", "none",
         "the course keeps every StepRecord for its plots; the server keeps the last 1024"),
    Knob("AdaptiveBatchSizePlugin", "plugin", "steer the budget toward a step-time target",
         "none", "none", "none", "production engines fix the budget and tune it offline"),
    Knob("AttentionRecorder", "plugin", "record attention weights for plots", "none", "none", "none"),
    Knob("KVQuantizationPlugin", "plugin", "store KV in int8 with a scale per token and head",
         "kv_cache_dtype ('fp8', ...; one scale per tensor, per attention head only with FlashAttention and "
         "llm-compressor scales)", "kv_cache_dtype", "kv_cache_dtype",
         "against bf16, an 8-bit KV halves the pool; against float32 it quarters it"),
    Knob("LoggingPlugin", "plugin", "log each step", "periodic stats log (disable_log_stats turns it off)",
         "log_level; enable_metrics for Prometheus", "Prometheus /metrics endpoint"),
    Knob("MetricsCollector", "plugin", "TTFT, TPOT, ITL, E2E and throughput from the engine's records",
         "Prometheus /metrics (TTFT, TPOT/ITL and E2E histograms)", "enable_metrics", "Prometheus /metrics endpoint",
         "all three measure the same quantities; the definitions follow vLLM's"),
    Knob("MemoryLeakDetector", "plugin", "flag memory that keeps growing step after step", "none", "none", "none",
         "production engines preallocate the KV pool once, so growth means a leak outside it"),
    Knob("ShardedAttentionPlugin", "plugin", "split a request's keys across shards, merge with the LSE",
         "decode_context_parallel_size (KV split by sequence over the TP ranks); tensor_parallel_size splits heads",
         "tp_size (splits heads, not the sequence)", "num_shard (splits heads)",
         "splitting by heads needs no merge; splitting by sequence needs the LSE merge this plugin does"),
    Knob("PriorityPlugin", "plugin", "order by Request.priority",
         "scheduling_policy='priority' + per-request priority (smaller first)",
         "enable_priority_scheduling + per-request priority (larger first by default)", "none"),
    Knob("SlidingWindowPlugin", "plugin", "attention sinks + sliding window, evicting old blocks",
         "none for sinks; sliding-window models get a hybrid KV allocator", "none", "none"),
)
# fmt: on


def knob_names() -> set[str]:
    return {k.ours for k in KNOBS}
