#!/usr/bin/env bash
# Regenerate audio_samples/demo.wav (16 kHz, mono, 16-bit PCM WAV) from audio_samples/demo.txt.
#
# Text: the opening of Chapter 1 of "Pride and Prejudice" by Jane Austen (1813), public domain
#       (Project Gutenberg eBook #1342, https://www.gutenberg.org/ebooks/1342).
# Voice: espeak-ng, voice en-us, 150 words per minute (synthesized, so no speaker's rights are involved).
#
# Needs espeak-ng and sox only to regenerate the clip:  apt-get install -y espeak-ng sox
# Usage:  audio_samples/make_demo.sh            (from anywhere; writes next to this script)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
text="$here/demo.txt"
out="$here/demo.wav"

for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null 2>&1 || { echo "make_demo.sh: $tool is not installed (apt-get install -y espeak-ng sox)" >&2; exit 1; }
done
[ -s "$text" ] || { echo "make_demo.sh: $text is missing or empty" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# espeak-ng writes 22.05 kHz mono 16-bit WAV; a short gap (-g, in 10 ms units) between words helps clarity.
espeak-ng -v en-us -s 150 -g 2 -f "$text" -w "$tmp/raw.wav"

# Resample to 16 kHz mono 16-bit, peak-normalize to -1 dBFS, add 0.3 s of silence at each end.
# -D disables dither so the output is reproducible bit for bit.
sox -D "$tmp/raw.wav" -r 16000 -c 1 -b 16 -e signed-integer "$tmp/demo.wav" rate -v 16000 gain -n -1 pad 0.3 0.3

mv "$tmp/demo.wav" "$out"
echo "wrote $out ($(soxi -D "$out") s, $(soxi -r "$out") Hz, $(soxi -c "$out") channel)"
