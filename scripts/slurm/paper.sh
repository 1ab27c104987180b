#!/bin/bash
# Submit the paper's full study: the LorentzNet teacher, then (after it succeeds) the students alone and
# distilled with T in {1, 3, 5}. Run from the repository root after converting the data into data/toptag/.
#
#   bash scripts/slurm/paper.sh
set -euo pipefail
mkdir -p logs
teacher=$(sbatch --parsable scripts/slurm/train.sbatch configs/teacher.yaml)
echo "teacher: job $teacher"
for cfg in mlp deepset mlp_kd_T1 mlp_kd_T3 mlp_kd_T5 deepset_kd_T1 deepset_kd_T3 deepset_kd_T5; do
  job=$(sbatch --parsable --dependency=afterok:"$teacher" --gpus-per-node=1 --job-name="jetkd-$cfg" \
        scripts/slurm/train.sbatch "configs/$cfg.yaml")
  echo "$cfg: job $job"
done
echo "when all are done: jetkd evaluate runs/paper/* --data data/toptag/test.h5 --out runs/paper/report"
