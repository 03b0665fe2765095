// SIGTERM / SIGINT for the training loop: the first signal asks the loop to stop after the
// current step (it then saves a checkpoint and exits 0); a second one ends the process at once
// (exit status 128 + signal), for a user who does not want to wait for the save.
#pragma once

namespace linmoe {

class StopSignals {
 public:
  // Installs the handlers; the destructor restores the previous ones. One instance at a time.
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal that asked for a stop (SIGTERM, SIGINT), 0 when none came.
  static int requested();
  static const char* name(int signal);
  static void reset();  // tests
};

}  // namespace linmoe
