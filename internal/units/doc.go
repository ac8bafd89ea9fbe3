// Package units formats and parses byte counts the way Shoal's CLI and logs show them.
package units
