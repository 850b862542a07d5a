namespace Vism.Abstractions;

/// <summary>
/// The one rule for relative paths. Paths in <c>[host]</c> (<c>state-dir</c>, <c>socket-dir</c>,
/// <c>plugin-paths</c>) are relative to the config file's directory, which makes the host's
/// directories absolute. A relative path in a plugin's options is relative to the host directory
/// that holds its kind of file: a Unix socket (<c>socket-path</c>) to <c>socket-dir</c>, anything
/// else (region files, a hugetlbfs <c>mount</c>) to <c>state-dir</c>. Absolute paths are used as
/// they are. Never the working directory.
/// </summary>
public static class HostPaths
{
    /// <summary>A socket path: relative ones are resolved against <see cref="HostDescription.SocketDirectory"/>.</summary>
    /// <param name="host">The host.</param>
    /// <param name="path">The path as configured.</param>
    /// <returns>An absolute, normalised path.</returns>
    public static string Socket(this HostDescription host, string path)
    {
        ArgumentNullException.ThrowIfNull(host);
        return Path.GetFullPath(path, Path.GetFullPath(host.SocketDirectory));
    }

    /// <summary>Any other plugin path: relative ones are resolved against <see cref="HostDescription.StateDirectory"/>.</summary>
    /// <param name="host">The host.</param>
    /// <param name="path">The path as configured.</param>
    /// <returns>An absolute, normalised path.</returns>
    public static string State(this HostDescription host, string path)
    {
        ArgumentNullException.ThrowIfNull(host);
        return Path.GetFullPath(path, Path.GetFullPath(host.StateDirectory));
    }
}
