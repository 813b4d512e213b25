"""Benchmark constants of llama2-70b (SPEC §0, §8): each defined once, named, and imported everywhere."""

# Dataset rule: every processed prompt is shorter than this many tokens.
INPUT_TOKEN_LIMIT = 1024
# Closed-division generation rule: greedy, at most this many new tokens.
MAX_NEW_TOKENS = 1024
# Reference generation kwargs: at least one new token (so the first token is never EOS).
MIN_NEW_TOKENS = 1
# Llama-2's lone "▁" piece, appended to every prompt so the first generated token is not free.
LLAMA2_RESPONSE_INIT_TOKEN = 29871
LLAMA2_VOCAB_SIZE = 32000
LLAMA2_BOS_TOKEN = 1
LLAMA2_EOS_TOKEN = 2

# LoadGen model names that select the built-in mlperf.conf keys.
LG_MODEL_NAME = "llama2-70b"
LG_MODEL_NAME_INTERACTIVE = "llama2-70b-interactive"
LG_MODEL_NAMES = (LG_MODEL_NAME, LG_MODEL_NAME_INTERACTIVE)

# Processed OpenOrca: number of samples of the benchmark.
TOTAL_SAMPLE_COUNT = 24576

# Output token data sent to LoadGen (SPEC §2 decision 1): int32 in both scenarios.
OUTPUT_DTYPE = "int32"

# Accuracy targets (SPEC §8), FP16 reference, 0-100 scale.
ROUGE_REFERENCE = {"rouge1": 44.4312, "rouge2": 22.0352, "rougeL": 28.6162}
TOKENS_PER_SAMPLE_REFERENCE = 294.45
TOKENS_PER_SAMPLE_TOLERANCE = (0.9, 1.1)

# Latency limits (mlperf.conf of LoadGen 6.0.17), milliseconds.
SERVER_TTFT_MS, SERVER_TPOT_MS = 2000, 200
INTERACTIVE_TTFT_MS, INTERACTIVE_TPOT_MS = 450, 40

# Processed dataset file names written by processorca.py (SPEC §5).
PROCESSED_PREFIX = "open_orca_gpt4_tokenized_llama"
