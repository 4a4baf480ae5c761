#!/bin/sh
# Regenerate the gRPC modules of `batch-infer serve` from batch_infer/serve/_proto/*.proto:
# grpc_predict_v2.proto (the Open Inference Protocol) and prediction.proto (the seed apps'
# PredictionService). The generated files are committed, so installing batch-infer needs no protoc.
#
# The messages go into descriptor pools of their own, not protobuf's default one: tritonclient
# (and any other Triton/KServe client) registers the same `inference.*` names in the default pool,
# and a seed client registers `prediction.*`; a second registration there fails with "duplicate
# symbol" in a process that imports both.
#
# Usage: scripts/gen_proto.sh   (needs grpcio-tools, in the dev extra)
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
RUFF=${RUFF:-.venv/bin/ruff}
OUT=batch_infer/serve/_proto

for name in grpc_predict_v2 prediction; do
    "$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
        "$OUT/$name.proto"
    sed -i 's/_descriptor_pool\.Default()\.AddSerializedFile(/_descriptor_pool.DescriptorPool().AddSerializedFile(/' \
        "$OUT/${name}_pb2.py"
    grep -q '_descriptor_pool.DescriptorPool().AddSerializedFile(' "$OUT/${name}_pb2.py" || {
        echo "Error: protoc's output changed; put the messages in a private descriptor pool by hand" >&2
        exit 1
    }
done
"$RUFF" check --quiet --fix --unsafe-fixes "$OUT" || true
"$RUFF" format --quiet "$OUT"
"$RUFF" check "$OUT"
