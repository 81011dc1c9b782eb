#!/usr/bin/env bash
# Fetch the official checkpoints and verify their sha256 sums. Nothing in the package runs
# this: the code only loads files whose paths you give it (sam.checkpoint, hpg.backbone_checkpoint).
#
#   scripts/download_weights.sh [DEST_DIR] [vit_h vit_l vit_b vit_t dinov2_vits14]
#
# DEST_DIR defaults to ./weights; with no names, everything (about 4.3 GB) is fetched.
# The table mirrors uois_sam_ros/core/weights.py (OFFICIAL).
set -euo pipefail

dest="${1:-weights}"
shift || true
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(vit_h vit_l vit_b vit_t dinov2_vits14)

declare -A FILE URL SHA
FILE[vit_h]=sam_vit_h_4b8939.pth
URL[vit_h]=https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth
SHA[vit_h]=a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e
FILE[vit_l]=sam_vit_l_0b3195.pth
URL[vit_l]=https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth
SHA[vit_l]=3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622
FILE[vit_b]=sam_vit_b_01ec64.pth
URL[vit_b]=https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth
SHA[vit_b]=ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912
FILE[vit_t]=mobile_sam.pt
URL[vit_t]=https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt
SHA[vit_t]=6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f
FILE[dinov2_vits14]=dinov2_vits14_pretrain.pth
URL[dinov2_vits14]=https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth
SHA[dinov2_vits14]=b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9

mkdir -p "$dest"
status=0
for n in "${names[@]}"; do
  if [ -z "${FILE[$n]:-}" ]; then
    echo "error: unknown weights '$n' (choose from: ${!FILE[*]})" >&2
    exit 2
  fi
  out="$dest/${FILE[$n]}"
  if [ ! -f "$out" ]; then
    echo "fetching $n -> $out"
    curl -fL --retry 3 -o "$out.part" "${URL[$n]}"
    mv "$out.part" "$out"
  fi
  got="$(sha256sum "$out" | cut -d' ' -f1)"
  if [ "$got" = "${SHA[$n]}" ]; then
    echo "ok       $out"
  else
    echo "MISMATCH $out: sha256 $got, expected ${SHA[$n]} (delete it and run again)" >&2
    status=1
  fi
done
exit $status
