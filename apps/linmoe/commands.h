// The subcommands of `linmoe`. Each gets the words after its name and returns the exit status;
// UserErrors propagate to main, which prints one line and ends every rank cleanly.
#pragma once

namespace linmoe {

class Runtime;

// Commands that run the model get the MPI runtime (ranks, groups, threads per rank).
int cmd_train(Runtime& runtime, int argc, char** argv);
int cmd_eval(Runtime& runtime, int argc, char** argv);
// Single-process tools.
int cmd_preprocess(int argc, char** argv);
int cmd_inspect(int argc, char** argv);
int cmd_convert(int argc, char** argv);
int cmd_data(int argc, char** argv);
int cmd_plot(int argc, char** argv);

}  // namespace linmoe
