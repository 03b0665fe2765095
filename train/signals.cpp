#include "train/signals.h"

#include <unistd.h>

#include <csignal>

namespace linmoe {
namespace {

volatile std::sig_atomic_t g_signal = 0;
struct sigaction g_old_term, g_old_int;

// Async-signal-safe only: a flag, write(2) and _exit.
void on_signal(int sig) {
  if (g_signal != 0) {
    static const char msg[] = "linmoe: second signal: exiting now without saving\n";
    (void)!::write(2, msg, sizeof(msg) - 1);
    ::_exit(128 + sig);
  }
  g_signal = sig;
  static const char msg[] =
      "linmoe: signal received: finishing the current step, saving a checkpoint, then exiting "
      "(send it again to exit at once)\n";
  (void)!::write(2, msg, sizeof(msg) - 1);
}

}  // namespace

StopSignals::StopSignals() {
  g_signal = 0;
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // a blocking read or write in progress goes on
  sigaction(SIGTERM, &sa, &g_old_term);
  sigaction(SIGINT, &sa, &g_old_int);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &g_old_term, nullptr);
  sigaction(SIGINT, &g_old_int, nullptr);
}

int StopSignals::requested() {
  return g_signal;
}

const char* StopSignals::name(int signal) {
  return signal == SIGTERM ? "SIGTERM" : signal == SIGINT ? "SIGINT" : "a signal";
}

void StopSignals::reset() {
  g_signal = 0;
}

}  // namespace linmoe
