# Sourced by the device scripts: install the wheels the device image lacks (carried in .whl,
# ignored by git) and put src/ on the path. Fetch the wheels here before a device call:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl tomli_w==1.2.0 flash-linear-attention==0.6.0 fla-core==0.6.0
# (fla's one other need, einops, is on the image.)
# Once per machine, under a lock: scripts started side by side must not reinstall over each other.
if [ -d .whl ]; then
  (
    flock 9
    [ -e /tmp/site/.installed ] || { python3 -m pip install -q --upgrade --no-index --no-deps --no-compile \
      --no-cache-dir --target /tmp/site .whl/*.whl && touch /tmp/site/.installed; }
  ) 9>/tmp/site.lock
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1
