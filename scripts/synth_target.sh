# Sourced by the CPU scripts: builds speedrun, defines `speedrun` (the release binary through
# cargo), makes the synthetic Markov shards in $data if they are missing, and sets $rate (their
# entropy rate, the lowest loss any model can reach) and $target (0.05 nats above it).
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release
speedrun() { cargo run --release --quiet -- "$@"; }
data=data/synth
[ -f "$data/synth.json" ] || speedrun data synth --out "$data"
rate=$(sed -n 's/.*"entropy_rate": *\([0-9.eE+-]*\).*/\1/p' "$data/synth.json")
target=$(awk -v r="$rate" 'BEGIN { printf "%.4f", r + 0.05 }')
echo "entropy rate of the data: $rate nats/token; target validation loss: $target"
