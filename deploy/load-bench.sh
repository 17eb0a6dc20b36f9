#!/usr/bin/env bash
# Recording load benchmark: N simulated 1080p 4 Mb/s cameras recorded by the release xueliang
# binary and by one `ffmpeg -c copy -f segment` process per stream; prints a markdown table
# (CPU and memory per stream, write rate, dropped frames, xueliang/ffmpeg ratio, simulator CPU)
# and writes it as JSON to target/load-bench.json. See benches/load.rs for what is measured.
#
#   bash deploy/load-bench.sh                                  # 16 and 64 streams, 30 s each
#   bash deploy/load-bench.sh --streams 16,64,256 --seconds 60 --ffmpeg-max 64
#   bash deploy/load-bench.sh --streams 256 --no-ffmpeg
#
# Arguments go to the benchmark unchanged. Needs ffmpeg/ffprobe (deploy/install-deps.sh test).
# 256 ffmpeg processes overload a 2-core box for minutes; --ffmpeg-max N or --no-ffmpeg skip them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v ffmpeg >/dev/null || {
  echo "load-bench: ffmpeg is missing; run: bash deploy/install-deps.sh test" >&2
  exit 1
}

cargo build --release --locked -p xueliang --bin xueliang
exec cargo bench --locked -p xueliang-benches --bench load -- --no-build "$@"
