"""Every word a figure or widget shows, in English and Chinese: one table, so the two stay side by side.

A view asks ``text(lang, key, **values)``; a key missing from the Chinese table is a bug a test catches
(``tests/test_viz_lang.py`` compares the two tables' keys and fields). Internal names (trace groups,
timeline states, frame names) never change with the language: only what a reader sees does.

The Chinese terms follow the course's Chinese notebooks and ``docs/cheatsheet_zh.md``: 预填充 (prefill),
解码 (decode), 块表 (block table), 抢占 (preemption), 重算 (recompute), 换出 / 换入 (swap out / in),
前缀缓存 (prefix caching), 投机解码 (speculative decoding). Setting names such as ``max_tokens_per_step``
are code and stay as they are.
"""

from __future__ import annotations

from .lang import resolve

EN: dict[str, str] = {
    # animate.py: the controls of every animated figure
    "play_button": "▶ play",
    "pause_button": "❚❚ pause",
    "slider_prefix": "step ",
    # budget.py
    "decode": "decode",
    "prefill": "prefill",
    "unused": "unused",
    "drafts": "speculative drafts",
    "budget": "budget",
    "budget_axis": "tokens in this step's budget",
    "budget_hover": "%{customdata[0]}<br>%{customdata[1]}: %{customdata[2]} tokens<extra>step %{customdata[3]}</extra>",
    "drafts_hover": (
        "%{customdata[0]}<br>%{customdata[2]} drafts, %{customdata[4]} accepted"
        "<br>(speculative tokens verified in this decode chunk)<extra>step %{customdata[3]}</extra>"
    ),
    "budget_step_title": "step {step}: {decode} decode + {prefill} prefill tokens, {unused} of {budget} unused",
    "budget_drafts_title": " ({drafts} of the decode tokens are drafts, {accepted} accepted)",
    "overview_title": "token budget per step: decode (solid), prefill chunks (hatched), unused (dotted grey)",
    "overview_drafts_title": ", speculative drafts (pale)",
    "step_axis": "step",
    "tokens_axis": "tokens",
    # mask.py
    "mask_keys_axis": "keys (pale: cached prefix, full: computed this step)",
    "mask_queries_axis": "this step's queries",
    "mask_step_title": "step {step}: {queries} queries x {keys} keys, {visible} visible ({cached} cached keys)",
    # attention.py
    "attention_title": "attention probabilities, step {step}, layer {layer}, head {head} (blank: masked, exactly 0)",
    "keys_axis": "keys",
    "queries_axis": "queries",
    # metrics.py
    "metrics_tokens_panel": "tokens per step",
    "metrics_throughput_panel": "throughput over time",
    "metrics_ttft_panel": "TTFT per request (ms)",
    "metrics_tpot_panel": "TPOT per request (ms)",
    "metrics_throughput": "tokens / s (cumulative)",
    "metrics_title": "{steps} steps, {requests} requests",
    "seconds_axis": "seconds since the first step",
    "ms_axis": "ms",
    # blocks.py
    "pool_panel": "block pool (grey: free, pale: part-filled, outlined: shared)",
    "tables_panel": "block tables",
    "table_index_axis": "table index",
    "blocks_step_title": "step {step}: {used} of {num_blocks} blocks in use, {waste} slots wasted in part-filled blocks",
    "blocks_shared_title": "; {shared} shared (outlined)",
    "blocks_copied_title": "; {copied} copied on write (orange)",
    "no_tables": "(none)",
    # timeline.py: the states' legend names, the markers, the axes
    "waiting": "waiting",
    "recompute": "recompute",
    "idle": "idle",
    "padding": "padding",
    "preempted": "preempted",
    "swap out": "swap out",
    "swap in": "swap in",
    "finished": "finished",
    "time_axis": "milliseconds since the first step",
    "state_hover": "%{customdata[0]} %{customdata[1]}: steps %{customdata[2]}..%{customdata[3]}<extra></extra>",
    "recompute_hover": "recompute (prefill again: KV lost to preemption)",
    "finished_hover": "%{y} finished after step %{customdata}<extra></extra>",
    "timeline_title": "request timeline: {steps} steps",
    "continuous": "continuous batching",
    "static": "static batching",
    "compare_title": "same workload, two schedulers",
    "compare_panel": "{name}: {steps} steps",
    # players.py
    "player_slider": "step",
    "player_play": "play",
    # playground.py
    "kv_slots": "KV pool (slots)",
    "num_requests": "requests",
    "prompt_len": "prompt length",
    "new_tokens": "new tokens",
    "seed": "workload seed",
    "shared_prefix": "shared prefix (tokens)",
    "preemption": "preemption",
    "prefix_caching": "prefix caching",
    "speculative": "speculative (n-gram)",
    "playground_status": (
        "{steps} steps, {tokens} tokens computed, budget use {use:.0f}%, peak KV {peak} slots"
        "; {preemptions} preemptions ({recomputed} tokens recomputed), "
        "{hits} prompt tokens from the prefix cache, "
        "{accepted} of {drafts} drafts accepted"
    ),
    # roofline_chart.py
    "roof": "roof",
    "roof_attention": "attention roof ({dtype})",
    "ridge": "ridge point",
    "ridge_text": "ridge {ridge:.0f} FLOPs/byte",
    "gemm_decode": "GEMMs, decode",
    "attention_decode": "attention, decode",
    "gemm_prefill": "GEMMs, prefill chunk",
    "attention_prefill": "attention, prefill chunk",
    "intensity_axis": "arithmetic intensity (FLOPs per byte)",
    "attained_axis": "attained TFLOP/s",
    "roofline_title": "roofline: {model} on {gpu}, {dtype}, decode context {context} tokens",
    "roof_decode_point": "decode, batch {batch}",
    "roof_prefill_point": "prefill chunk of {tokens} tokens after {before}",
    "compute_bound": "compute-bound",
    "memory_bound": "memory-bound",
    "roofline_hover": (
        "%{customdata[0]}, %{customdata[1]}<br>%{x:.3g} FLOPs/byte, %{y:.3g} TFLOP/s"
        "<br>%{customdata[2]:.3g} µs (%{customdata[3]})<extra></extra>"
    ),
    "ridge_hover": "ridge point: %{x:.0f} FLOPs/byte = peak / bandwidth<extra></extra>",
    # memory_bar.py
    "mem_weights": "weights {gib:.1f} GiB",
    "mem_kv_used": "KV in use {gib:.1f} GiB",
    "mem_kv_over": "KV that does not fit {gib:.1f} GiB",
    "mem_kv_free": "free KV {gib:.1f} GiB",
    "mem_reserve": "reserve & activations {gib:.1f} GiB",
    "mem_axis": "GPU memory, GiB (2^30 bytes)",
    "mem_title": "{model} on {gpu}: {requests} requests x {context} tokens of KV",
    "mem_over_title": "<br>over-full: KV needs {need:.1f} GiB, the pool holds {have:.1f} GiB",
    "mem_gpu_line": "GPU {gib:.1f} GiB",
    "mem_util_line": "utilization {util:.0%}",
    "mem_hover": "%{customdata}: %{x:.2f} GiB<extra></extra>",
    # sim_timeline.py
    "sim_decode": "decode tokens",
    "sim_prefill": "prefill tokens",
    "sim_running": "running",
    "sim_waiting": "waiting",
    "sim_preempted": "preemptions",
    "sim_time_axis": "simulated seconds",
    "sim_tokens_axis": "tokens per step",
    "sim_requests_axis": "requests",
    "sim_title": "simulated run: {steps} steps, {requests} requests, {seconds:.2f} s",
    "sim_step_hover": "step %{customdata[0]}: %{y} %{customdata[1]}<br>%{customdata[2]:.3g} ms<extra></extra>",
    "sim_preempt_hover": "step %{customdata[0]}: %{customdata[1]} preempted<extra></extra>",
}

ZH: dict[str, str] = {
    "play_button": "▶ 播放",
    "pause_button": "❚❚ 暂停",
    "slider_prefix": "步：",
    "decode": "解码",
    "prefill": "预填充",
    "unused": "未用",
    "drafts": "投机草稿",
    "budget": "预算",
    "budget_axis": "本步预算中的 token 数",
    "budget_hover": "%{customdata[0]}<br>%{customdata[1]}：%{customdata[2]} 个 token<extra>第 %{customdata[3]} 步</extra>",
    "drafts_hover": (
        "%{customdata[0]}<br>%{customdata[2]} 个草稿，接受了 %{customdata[4]} 个"
        "<br>（这个解码块里被验证的投机 token）<extra>第 %{customdata[3]} 步</extra>"
    ),
    "budget_step_title": "第 {step} 步：解码 {decode} 个 + 预填充 {prefill} 个 token，预算 {budget} 中未用 {unused} 个",
    "budget_drafts_title": "（解码 token 中 {drafts} 个是草稿，接受了 {accepted} 个）",
    "overview_title": "每步的 token 预算：解码（实心）、预填充块（斜线）、未用（灰色点）",
    "overview_drafts_title": "、投机草稿（浅色）",
    "step_axis": "步",
    "tokens_axis": "token 数",
    "mask_keys_axis": "key（浅色：缓存的前缀，深色：本步新算的）",
    "mask_queries_axis": "本步的 query",
    "mask_step_title": "第 {step} 步：{queries} 个 query × {keys} 个 key，可见 {visible} 格（其中缓存的 key {cached} 个）",
    "attention_title": "注意力概率：第 {step} 步，第 {layer} 层，第 {head} 个头（空白：被掩码遮住，恰为 0）",
    "keys_axis": "key（键）",
    "queries_axis": "query（查询）",
    "metrics_tokens_panel": "每步的 token 数",
    "metrics_throughput_panel": "吞吐随时间的变化",
    "metrics_ttft_panel": "每个请求的 TTFT（毫秒）",
    "metrics_tpot_panel": "每个请求的 TPOT（毫秒）",
    "metrics_throughput": "每秒 token 数（累计）",
    "metrics_title": "共 {steps} 步，{requests} 个请求",
    "seconds_axis": "距第一步开始的秒数",
    "ms_axis": "毫秒",
    "pool_panel": "块池（灰：空闲块，浅色：未填满，描边：共享）",
    "tables_panel": "块表",
    "table_index_axis": "块表中的序号",
    "blocks_step_title": "第 {step} 步：{num_blocks} 个块中用了 {used} 个，未填满的块浪费了 {waste} 个槽位",
    "blocks_shared_title": "；{shared} 个块被共享（描边）",
    "blocks_copied_title": "；{copied} 个块写时复制（橙色）",
    "no_tables": "（无）",
    "waiting": "等待",
    "recompute": "重算",
    "idle": "空闲",
    "padding": "填充",
    "preempted": "被抢占",
    "swap out": "换出",
    "swap in": "换入",
    "finished": "完成",
    "time_axis": "距第一步开始的毫秒数",
    "state_hover": "%{customdata[0]} %{customdata[1]}：第 %{customdata[2]} 到 %{customdata[3]} 步<extra></extra>",
    "recompute_hover": "重算（KV 被抢占释放，重新预填充）",
    "finished_hover": "%{y} 在第 %{customdata} 步之后完成<extra></extra>",
    "timeline_title": "请求时间线：共 {steps} 步",
    "continuous": "连续批处理",
    "static": "静态批处理",
    "compare_title": "同一负载，两种调度方式",
    "compare_panel": "{name}：共 {steps} 步",
    "player_slider": "步",
    "player_play": "播放",
    "kv_slots": "KV 池（槽位）",
    "num_requests": "请求数",
    "prompt_len": "提示长度",
    "new_tokens": "新生成 token 数",
    "seed": "负载随机种子",
    "shared_prefix": "共享前缀（token 数）",
    "preemption": "抢占",
    "prefix_caching": "前缀缓存",
    "speculative": "投机解码（n-gram）",
    "playground_status": (
        "共 {steps} 步，计算了 {tokens} 个 token，预算利用率 {use:.0f}%，KV 峰值 {peak} 个槽位"
        "；抢占 {preemptions} 次（重算 {recomputed} 个 token），"
        "{hits} 个提示 token 来自前缀缓存，"
        "{drafts} 个草稿中接受了 {accepted} 个"
    ),
    "roof": "屋顶线",
    "roof_attention": "注意力的屋顶线（{dtype}）",
    "ridge": "拐点",
    "ridge_text": "拐点 {ridge:.0f} 次浮点运算/字节",
    "gemm_decode": "矩阵乘（解码）",
    "attention_decode": "注意力（解码）",
    "gemm_prefill": "矩阵乘（预填充块）",
    "attention_prefill": "注意力（预填充块）",
    "intensity_axis": "算术强度（每字节的浮点运算数）",
    "attained_axis": "可达到的 TFLOP/s（每秒万亿次浮点运算）",
    "roofline_title": "Roofline 模型：{gpu} 上的 {model}，{dtype}，解码上下文 {context} 个 token",
    "roof_decode_point": "解码，批大小 {batch}",
    "roof_prefill_point": "预填充块：{tokens} 个 token，前面已有 {before} 个",
    "compute_bound": "算力受限",
    "memory_bound": "带宽受限",
    "roofline_hover": (
        "%{customdata[0]}，%{customdata[1]}<br>每字节 %{x:.3g} 次浮点运算，%{y:.3g} TFLOP/s"
        "<br>%{customdata[2]:.3g} 微秒（%{customdata[3]}）<extra></extra>"
    ),
    "ridge_hover": "拐点：每字节 %{x:.0f} 次浮点运算 = 峰值算力 / 带宽<extra></extra>",
    "mem_weights": "权重 {gib:.1f} GiB",
    "mem_kv_used": "已用 KV {gib:.1f} GiB",
    "mem_kv_over": "放不下的 KV {gib:.1f} GiB",
    "mem_kv_free": "空闲 KV {gib:.1f} GiB",
    "mem_reserve": "预留与激活 {gib:.1f} GiB",
    "mem_axis": "GPU 显存（GiB，2^30 字节）",
    "mem_title": "{gpu} 上的 {model}：{requests} 个请求 × 每个 {context} 个 token 的 KV",
    "mem_over_title": "<br>超出容量：KV 需要 {need:.1f} GiB，KV 池只有 {have:.1f} GiB",
    "mem_gpu_line": "显存 {gib:.1f} GiB",
    "mem_util_line": "利用率 {util:.0%}",
    "mem_hover": "%{customdata}：共 %{x:.2f} GiB<extra></extra>",
    "sim_decode": "解码 token",
    "sim_prefill": "预填充 token",
    "sim_running": "运行中",
    "sim_waiting": "等待中",
    "sim_preempted": "抢占",
    "sim_time_axis": "模拟时钟（秒）",
    "sim_tokens_axis": "每步 token 数",
    "sim_requests_axis": "请求数",
    "sim_title": "模拟运行：{steps} 步，{requests} 个请求，{seconds:.2f} 秒",
    "sim_step_hover": "第 %{customdata[0]} 步：%{y} 个%{customdata[1]}<br>%{customdata[2]:.3g} 毫秒<extra></extra>",
    "sim_preempt_hover": "第 %{customdata[0]} 步：抢占 %{customdata[1]} 个请求<extra></extra>",
}

TABLES = {"en": EN, "zh": ZH}


def text(lang: str | None, key: str, **values: object) -> str:
    """The words for ``key`` in ``lang`` (``None``: the current language), with ``values`` filled in."""
    words = TABLES[resolve(lang)][key]
    return words.format(**values) if values else words
