"""Builds a data set into TFDS records under WORK_DIR/tfds (or --data_dir).

Phantoms (no download):
  cxr-build-dataset --work_dir=work --config=demo
Real data sets read the raw files from --manual_dir, see README.md.
"""

from absl import flags

from pipelines import flags as cxr_flags

cxr_flags.define_common()
flags.adopt_module_key_flags(cxr_flags)


def main(argv):
    del argv
    cxr_flags.setup_logging()
    from cxr_tf import workflow
    workflow.build_data(cxr_flags.experiment_config(), cxr_flags.data_dir(),
                        manual_dir=flags.FLAGS.manual_dir)


def run():
    cxr_flags.run(main)


if __name__ == "__main__":
    run()
