// The subcommands of `linmoe`. Each gets the words after its name and returns the exit status;
// UserErrors propagate to main, which prints one line and ends every rank cleanly.
#pragma once

namespace linmoe {

int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_preprocess(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_data(int argc, char** argv);

}  // namespace linmoe
