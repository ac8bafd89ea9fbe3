// Package origin reads image manifests and blob byte ranges from where every chunk starts: an OCI
// Distribution registry, a plain HTTP server, or a local OCI image layout. It also holds the
// embedded read-only origin server and image push.
package origin
