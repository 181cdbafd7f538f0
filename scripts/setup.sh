#!/usr/bin/env bash
# Installs what edgeq needs to build, test and run, and nothing that is already there.
#
# 1. Debian 12 packages (compiler libraries, libtorch, ONNX, the Fashion-MNIST data set).
# 2. ONNX Runtime, in this order of preference:
#    a. ONNXRUNTIME_ROOT, when set (for example a Ryzen AI SDK build that carries the Vitis AI EP);
#    b. a system install (onnxruntime_cxx_api.h and libonnxruntime.so found by the compiler);
#    c. otherwise one assembled in third_party/onnxruntime from the official Linux x64
#       libonnxruntime.so.1 of the npm package onnxruntime-node (checksum pinned) and the C/C++ API
#       headers of Debian 13's libonnxruntime-dev, fetched through a private apt sources list and
#       state folder. The system's apt sources are never changed.
#
# Usage: scripts/setup.sh            (idempotent: a second run only checks)
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd)
third_party="$repo_root/third_party"

log() { printf 'setup: %s\n' "$*"; }
fail() {
    printf 'setup: error: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
# libopenblas0-pthread matters: without it libtorch falls back to the reference BLAS, about 3x slower.
# python3-torch and python3-onnx are test oracles only; the product never imports them.
# python3-torchvision and libonnx-testdata give the tests CNNs that edgeq did not write.
# cairo draws the figures; chromium only serves the test that opens out/report.html headless.
debian_packages=(
    build-essential cmake ninja-build pkg-config ca-certificates curl
    libtorch-dev libopenblas0-pthread
    libonnx-dev libprotobuf-dev protobuf-compiler
    dataset-fashion-mnist
    libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev zlib1g-dev libpng-dev
    libcairo2-dev fonts-dejavu-core
    libgtest-dev libgmock-dev libbenchmark-dev
    python3-torch python3-onnx
    python3-torchvision libonnx-testdata
    nodejs npm
    chromium
)

missing_packages=()
for package in "${debian_packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing_packages+=("$package")
done

# nodejs from NodeSource already brings npm; Debian's npm package would conflict with it.
if command -v npm >/dev/null 2>&1; then
    filtered=()
    for package in "${missing_packages[@]}"; do
        [[ "$package" == nodejs || "$package" == npm ]] || filtered+=("$package")
    done
    missing_packages=("${filtered[@]+"${filtered[@]}"}")
fi

if ((${#missing_packages[@]} > 0)); then
    log "installing Debian packages: ${missing_packages[*]}"
    [[ $(id -u) -eq 0 ]] || fail "installing packages needs root; run: sudo $0"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing_packages[@]}"
else
    log "Debian packages: all present"
fi

[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
    log "warning: Fashion-MNIST not found in /usr/share/datasets/fashion-mnist; pass --data DIR to edgeq"

# ---------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------
ort_npm_version=1.30.0
ort_library_sha256=ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23
ort_headers_package=libonnxruntime-dev
ort_headers_version=1.21.0+dfsg-1
ort_headers_sha256=14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
ort_bundle="$third_party/onnxruntime"

if [[ -n "${ONNXRUNTIME_ROOT:-}" ]]; then
    [[ -f "$ONNXRUNTIME_ROOT/include/onnxruntime_cxx_api.h" || -f "$ONNXRUNTIME_ROOT/include/onnxruntime/onnxruntime_cxx_api.h" ]] ||
        fail "ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT has no include/onnxruntime_cxx_api.h; point it at an ONNX Runtime install or unset it"
    log "ONNX Runtime: using ONNXRUNTIME_ROOT=$ONNXRUNTIME_ROOT"
    exit 0
fi

# ldconfig lives in /sbin, which a non-root PATH may lack. Its output is captured first, because
# grep -q closing the pipe early would fail the pipeline under pipefail.
system_libraries=$(/sbin/ldconfig -p 2>/dev/null || true)
if [[ -f /usr/include/onnxruntime/onnxruntime_cxx_api.h || -f /usr/local/include/onnxruntime_cxx_api.h ]] &&
    grep -q 'libonnxruntime\.so' <<<"$system_libraries"; then
    log "ONNX Runtime: using the system install"
    exit 0
fi

library_ok() {
    [[ -f "$ort_bundle/lib/libonnxruntime.so.1" ]] &&
        echo "$ort_library_sha256  $ort_bundle/lib/libonnxruntime.so.1" | sha256sum --check --status
}

if library_ok && [[ -f "$ort_bundle/include/onnxruntime_cxx_api.h" ]]; then
    log "ONNX Runtime: $ort_bundle is ready"
    exit 0
fi

work_dir=$(mktemp -d)
trap 'rm -rf "$work_dir"' EXIT
mkdir -p "$work_dir/bundle/lib" "$work_dir/bundle/include"

# The library: the official x64 build shipped inside the npm package.
log "ONNX Runtime: fetching onnxruntime-node@$ort_npm_version from the npm registry"
(cd "$work_dir" && npm pack --silent "onnxruntime-node@$ort_npm_version" >/dev/null) ||
    fail "npm pack onnxruntime-node@$ort_npm_version failed; check that the npm registry is reachable"
tar -xzf "$work_dir"/onnxruntime-node-*.tgz -C "$work_dir" package/bin/napi-v6/linux/x64/libonnxruntime.so.1 ||
    fail "the npm package has no bin/napi-v6/linux/x64/libonnxruntime.so.1"
library="$work_dir/package/bin/napi-v6/linux/x64/libonnxruntime.so.1"
echo "$ort_library_sha256  $library" | sha256sum --check --status ||
    fail "libonnxruntime.so.1 from onnxruntime-node@$ort_npm_version has an unexpected SHA-256; refusing to use it"
cp "$library" "$work_dir/bundle/lib/libonnxruntime.so.1"
ln -s libonnxruntime.so.1 "$work_dir/bundle/lib/libonnxruntime.so"

# The headers: Debian 13's libonnxruntime-dev, through a private apt configuration.
log "ONNX Runtime: fetching the C/C++ API headers ($ort_headers_package $ort_headers_version, Debian 13)"
apt_root="$work_dir/apt"
mkdir -p "$apt_root/etc/sources.list.d" "$apt_root/etc/preferences.d" "$apt_root/state/lists/partial" \
    "$apt_root/cache/archives/partial" "$apt_root/download"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
    >"$apt_root/etc/sources.list"
apt_options=(
    -o "Dir::Etc=$apt_root/etc" -o "Dir::Etc::sourcelist=$apt_root/etc/sources.list"
    -o "Dir::Etc::sourceparts=$apt_root/etc/sources.list.d" -o "Dir::Etc::preferencesparts=$apt_root/etc/preferences.d"
    -o "Dir::State=$apt_root/state" -o "Dir::State::status=/dev/null" -o "Dir::Cache=$apt_root/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
)
apt-get "${apt_options[@]}" -q update >/dev/null || fail "apt-get update on the private Debian 13 sources list failed"
(cd "$apt_root/download" && apt-get "${apt_options[@]}" -q download "$ort_headers_package=$ort_headers_version" >/dev/null) ||
    fail "downloading $ort_headers_package=$ort_headers_version from Debian 13 failed"
deb_file=$(ls "$apt_root"/download/*.deb)
echo "$ort_headers_sha256  $deb_file" | sha256sum --check --status ||
    fail "$(basename "$deb_file") has an unexpected SHA-256; refusing to use it"
dpkg-deb -x "$deb_file" "$work_dir/extracted"
cp "$work_dir"/extracted/usr/include/onnxruntime/*.h "$work_dir/bundle/include/"
cp -r "$work_dir/extracted/usr/include/onnxruntime/core" "$work_dir/bundle/include/"

cat >"$work_dir/bundle/VERSION" <<EOF
library: onnxruntime-node@$ort_npm_version bin/napi-v6/linux/x64/libonnxruntime.so.1 sha256 $ort_library_sha256
headers: Debian 13 $ort_headers_package $ort_headers_version sha256 $ort_headers_sha256
EOF

# Replace the bundle in one step so that an interrupted run never leaves half a bundle behind.
mkdir -p "$third_party"
rm -rf "$ort_bundle.old"
[[ -d "$ort_bundle" ]] && mv "$ort_bundle" "$ort_bundle.old"
mv "$work_dir/bundle" "$ort_bundle"
rm -rf "$ort_bundle.old"
log "ONNX Runtime: assembled in $ort_bundle"
