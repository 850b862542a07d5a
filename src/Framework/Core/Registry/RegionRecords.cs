using System.Globalization;
using System.Text;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;

namespace Vism.Core.Registry;

/// <summary>What the trust model says about one persisted region: who owns it (a stable devid,
/// <see cref="HostIdentity"/>), its permission table and the pair rule's two devices.</summary>
/// <param name="Owner">The allocating device's devid (holds MANAGE unless it granted itself less).</param>
/// <param name="OwnerEntry">The owner's own entry.</param>
/// <param name="Default">The default entry (peer devid 0).</param>
/// <param name="DenyOther">Whether devices without an entry are denied attach.</param>
/// <param name="Entries">Per-device entries other than the owner's.</param>
/// <param name="PeerA">The first device that referenced the region (pair rule), or 0.</param>
/// <param name="PeerB">The second, or 0.</param>
internal sealed record RegionRecord(ulong Owner, IsmPermissions OwnerEntry, IsmPermissions Default, bool DenyOther,
    IReadOnlyDictionary<ulong, IsmPermissions> Entries, ulong PeerA, ulong PeerB);

/// <summary>
/// The owner and permission records of persisted regions, one small text file per region in
/// <c>&lt;state-dir&gt;/region-permissions/&lt;token&gt;.perm</c> (mode 0600), kept apart from the memory
/// backend's region files: the memory plugin keeps bytes, the core keeps who may touch them.
/// A record is written when a persistent region is allocated and whenever its table or pair
/// changes, replaced atomically, and deleted when the region is freed. At start-up a recovered
/// region without a readable record is not adopted (nobody could be trusted with it).
/// </summary>
internal sealed class RegionRecords
{
    /// <summary>The folder inside the state directory.</summary>
    public const string Folder = "region-permissions";

    private readonly string _directory;
    private readonly ILogger _log;

    public RegionRecords(string stateDirectory, ILogger log)
    {
        _directory = Path.Combine(Path.GetFullPath(stateDirectory), Folder);
        _log = log;
        Directory.CreateDirectory(_directory);
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(_directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
    }

    private string PathOf(ulong token) => Path.Combine(_directory, token.ToString("x16", CultureInfo.InvariantCulture) + ".perm");

    /// <summary>Writes (replaces) the record of <paramref name="token"/>. Failures are logged and returned.</summary>
    public bool TryWrite(ulong token, RegionRecord record)
    {
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"owner {record.Owner} {(ulong)record.OwnerEntry}\n");
        text.Append(CultureInfo.InvariantCulture, $"default {(ulong)record.Default} {(record.DenyOther ? 1 : 0)}\n");
        text.Append(CultureInfo.InvariantCulture, $"pair {record.PeerA} {record.PeerB}\n");
        foreach ((ulong devId, IsmPermissions p) in record.Entries.OrderBy(e => e.Key))
            text.Append(CultureInfo.InvariantCulture, $"entry {devId} {(ulong)p}\n");
        string path = PathOf(token), temp = path + ".tmp";
        try
        {
            File.WriteAllText(temp, text.ToString());
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.Move(temp, path, overwrite: true);
            return true;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _log.LogError("cannot write the permission record {Path}: {Error}", path, ex.Message);
            return false;
        }
    }

    /// <summary>Reads the record of <paramref name="token"/>; null (with the reason) when it is missing or damaged.</summary>
    public RegionRecord? TryRead(ulong token, out string? problem)
    {
        string path = PathOf(token);
        problem = null;
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (FileNotFoundException)
        {
            problem = $"it has no permission record ({path})";
            return null;
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            problem = $"its permission record {path} cannot be read: {ex.Message}";
            return null;
        }
        ulong owner = 0, peerA = 0, peerB = 0;
        IsmPermissions ownerEntry = 0, deflt = 0;
        bool denyOther = false, sawOwner = false, sawDefault = false;
        var entries = new Dictionary<ulong, IsmPermissions>();
        foreach (string line in lines)
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length == 0)
                continue;
            ulong[] n = new ulong[f.Length - 1];
            for (int i = 1; i < f.Length; i++)
                if (!ulong.TryParse(f[i], NumberStyles.None, CultureInfo.InvariantCulture, out n[i - 1]))
                {
                    problem = $"its permission record {path} is damaged ('{line}')";
                    return null;
                }
            switch (f[0])
            {
                case "owner" when n.Length == 2 && n[0] != 0:
                    (owner, ownerEntry, sawOwner) = (n[0], (IsmPermissions)n[1] & IsmPermissions.All, true);
                    break;
                case "default" when n.Length == 2:
                    (deflt, denyOther, sawDefault) = ((IsmPermissions)n[0] & IsmPermissions.All, n[1] != 0, true);
                    break;
                case "pair" when n.Length == 2:
                    (peerA, peerB) = (n[0], n[1]);
                    break;
                case "entry" when n.Length == 2 && n[0] != 0:
                    entries[n[0]] = (IsmPermissions)n[1] & IsmPermissions.All;
                    break;
                default:
                    problem = $"its permission record {path} is damaged ('{line}')";
                    return null;
            }
        }
        if (!sawOwner || !sawDefault)
        {
            problem = $"its permission record {path} names no owner or default entry";
            return null;
        }
        return new RegionRecord(owner, ownerEntry, deflt, denyOther, entries, peerA, peerB);
    }

    /// <summary>Deletes the record of a freed region.</summary>
    public void Delete(ulong token)
    {
        try
        {
            File.Delete(PathOf(token));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            _log.LogWarning("cannot delete the permission record of a freed region: {Error}", ex.Message);
        }
    }
}
