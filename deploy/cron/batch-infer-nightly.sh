#!/bin/sh
# Nightly batch-infer from cron: scores yesterday (UTC), retries "try again later" (exit 75) and
# other failures a rerun may fix with a growing delay, and never retries 2, 3, 4 or 5 (usage or
# config, bad input, model, output conflict), which would fail the same way again, nor an
# interruption (130, 143: someone stopped it; the next run resumes).
# The crontab line (one line: cron has no continuation; `%` must be written `\%` there):
#   30 2 * * * flock -n /run/lock/batch-infer-nightly.lock /srv/batch-infer/deploy/cron/batch-infer-nightly.sh >> /var/log/batch-infer/nightly.log 2>&1
# Settings (environment): BATCH_INFER_EXECUTABLE (default batch-infer), BATCH_INFER_CONFIG_FILE
# (default /etc/batch-infer/nightly.yaml), BATCH_INFER_ATTEMPTS (4), BATCH_INFER_RETRY_DELAY_SECONDS
# (600, doubled after each try). A first argument YYYY-MM-DD scores that date instead.
# Exit code: batch-infer's last one, so a monitor sees 0, 75 (gave up for now) or the error.
set -u

executable=${BATCH_INFER_EXECUTABLE:-batch-infer}
config=${BATCH_INFER_CONFIG_FILE:-/etc/batch-infer/nightly.yaml}
attempts=${BATCH_INFER_ATTEMPTS:-4}
delay=${BATCH_INFER_RETRY_DELAY_SECONDS:-600}
run_date=${1:-$(date -u -d yesterday +%F)}

say() { echo "$(date -u +%FT%TZ) batch-infer-nightly $run_date: $*" >&2; }

attempt=1
while :; do
    "$executable" run --config "$config" --run-date "$run_date" --if-exists skip --output-format json
    code=$?
    case $code in
        0) say "done (attempt $attempt)"; exit 0 ;;
        2 | 3 | 4 | 5) say "failed with exit $code, not retried: fix the cause, then rerun"; exit "$code" ;;
        130 | 143) say "interrupted (exit $code)"; exit "$code" ;;
    esac
    if [ "$attempt" -ge "$attempts" ]; then
        say "failed with exit $code after $attempt attempts"
        exit "$code"
    fi
    say "exit $code, retrying in ${delay}s (attempt $attempt of $attempts)"
    sleep "$delay"
    delay=$((delay * 2))
    attempt=$((attempt + 1))
done
