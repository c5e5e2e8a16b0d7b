"""`hadmc experiment`: the paper's studies (Table 2, Table 3, controllers, data sets, devices) on
the user's own device and data, in one command, with mean +- std over seeds.

Light on purpose (the CLI's parser reads these names): the work is in config, studies and run.
"""

STUDIES = ("sota", "ablation", "controllers", "hirelc-ablation", "cross-dataset", "cross-device")
PRESET_NAMES = ("paper", "tiny")
