// SIGINT / SIGTERM: the first asks the running command to stop cleanly (the indexer
// after the height in progress, the server after the requests in flight); the second
// exits at once (every height is atomic, so the database is consistent either way).
#pragma once

namespace stateroot::tools {

void install_stop_handlers();
bool stop_requested();

}  // namespace stateroot::tools
