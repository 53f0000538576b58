/* The one header bindgen reads: the public UCP API pulls in the ucs types it uses. */
#include <ucp/api/ucp.h>
