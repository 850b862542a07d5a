using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;

namespace Vism.Core;

/// <summary>
/// What makes one vism host (one state directory) a host of its own, recorded in its state
/// directory so that it survives restarts:
/// <list type="bullet">
/// <item><c>host-id</c>: 128 random bits made at the first start. The gid is derived from the
/// machine id and this id, so it is the same at every start of this host and different for another
/// host on the same machine (another state directory) and for a copy of the directory on another machine.</item>
/// <item><c>devids</c>: one line <c>DEVID NAME</c> per device name ever started here. A device gets
/// its recorded devid at every start; a new name gets the next devid never recorded, so a devid is
/// never 0, never reused for another name, and stable for a device across restarts.</item>
/// </list>
/// Files are replaced atomically (written to a temporary file, then renamed). Thread-safe.
/// </summary>
public sealed class HostIdentity
{
    /// <summary>The file holding the host id.</summary>
    public const string HostIdFile = "host-id";

    /// <summary>The file holding the devid records.</summary>
    public const string DevIdsFile = "devids";

    private readonly Lock _lock = new();
    private readonly string _directory;
    private readonly Dictionary<string, ulong> _devIds = new(StringComparer.Ordinal);
    private readonly ILogger _log;

    private HostIdentity(string directory, string hostId, ILogger log)
    {
        _directory = directory;
        HostId = hostId;
        _log = log;
    }

    /// <summary>The host id (32 hex digits).</summary>
    public string HostId { get; }

    /// <summary>Opens (or creates) the identity recorded in <paramref name="stateDirectory"/>.</summary>
    /// <param name="stateDirectory">The host's state directory; created when missing.</param>
    /// <param name="log">Where a damaged record is reported.</param>
    /// <returns>The identity.</returns>
    /// <exception cref="IOException">When the directory or its files cannot be read or written.</exception>
    public static HostIdentity Open(string stateDirectory, ILogger log)
    {
        ArgumentException.ThrowIfNullOrEmpty(stateDirectory);
        ArgumentNullException.ThrowIfNull(log);
        string directory = Path.GetFullPath(stateDirectory);
        Directory.CreateDirectory(directory);
        string idPath = Path.Combine(directory, HostIdFile);
        string? hostId = File.Exists(idPath) ? File.ReadAllText(idPath).Trim() : null;
        if (hostId is null || hostId.Length != 32 || !hostId.All(char.IsAsciiHexDigit))
        {
            if (hostId is not null)
                log.LogWarning("{Path} does not hold a host id; a new one is made (the gid changes)", idPath);
            hostId = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
            WriteAtomically(idPath, hostId + "\n");
        }
        var identity = new HostIdentity(directory, hostId, log);
        identity.ReadDevIds();
        return identity;
    }

    /// <summary>The gid of this host on a machine with <paramref name="machineId"/>.</summary>
    /// <param name="machineId">The machine id text.</param>
    /// <returns>A non-zero gid.</returns>
    public ulong Gid(string machineId) => IsmHost.DeriveGid(machineId.Trim() + "/" + HostId);

    /// <summary>The devid recorded for <paramref name="name"/>, or a new one (recorded before it is returned).</summary>
    /// <param name="name">The device name (unique in the host).</param>
    /// <returns>A devid, never 0.</returns>
    public ulong DevIdFor(string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        lock (_lock)
        {
            if (_devIds.TryGetValue(name, out ulong known))
                return known;
            ulong next = _devIds.Count == 0 ? 1 : _devIds.Values.Max() + 1;
            _devIds.Add(name, next);
            var text = new StringBuilder("# devid name: written by vism; a device keeps its devid across restarts\n");
            foreach ((string n, ulong id) in _devIds.OrderBy(kv => kv.Value))
                text.Append(CultureInfo.InvariantCulture, $"{id} {n}\n");
            WriteAtomically(Path.Combine(_directory, DevIdsFile), text.ToString());
            return next;
        }
    }

    private void ReadDevIds()
    {
        string path = Path.Combine(_directory, DevIdsFile);
        if (!File.Exists(path))
            return;
        int line = 0;
        foreach (string raw in File.ReadAllLines(path))
        {
            line++;
            string text = raw.Trim();
            if (text.Length == 0 || text.StartsWith('#'))
                continue;
            string[] parts = text.Split(' ', 2, StringSplitOptions.TrimEntries);
            if (parts.Length != 2 || !ulong.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong id) || id == 0
                || parts[1].Length == 0 || _devIds.ContainsKey(parts[1]) || _devIds.ContainsValue(id))
            {
                _log.LogWarning("{Path}:{Line}: not a devid record ('{Text}'); ignored", path, line, text);
                continue;
            }
            _devIds.Add(parts[1], id);
        }
    }

    private static void WriteAtomically(string path, string text)
    {
        string temp = path + ".tmp";
        File.WriteAllText(temp, text);
        File.Move(temp, path, overwrite: true);
    }
}
