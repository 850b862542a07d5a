using System.Globalization;

namespace Vism.Conformance.Probes;

/// <summary>One line of <c>/proc/self/maps</c>.</summary>
/// <param name="Start">First address.</param>
/// <param name="End">One past the last address.</param>
/// <param name="Permissions">The four permission characters, e.g. <c>rw-s</c>.</param>
/// <param name="Path">The backing file, or an empty string for anonymous memory.</param>
public sealed record MapsEntry(ulong Start, ulong End, string Permissions, string Path)
{
    /// <summary>Readable.</summary>
    public bool Readable => Permissions.Length > 0 && Permissions[0] == 'r';

    /// <summary>Writable.</summary>
    public bool Writable => Permissions.Length > 1 && Permissions[1] == 'w';

    /// <summary>A shared mapping (what a region mapping must be).</summary>
    public bool Shared => Permissions.Length > 3 && Permissions[3] == 's';
}

/// <summary>This process's memory map, as the kernel reports it.</summary>
public static class ProcMaps
{
    /// <summary>The mappings that overlap [<paramref name="address"/>, +<paramref name="length"/>), in address order.</summary>
    /// <param name="address">Start of the range.</param>
    /// <param name="length">Bytes.</param>
    /// <returns>The overlapping entries.</returns>
    public static IReadOnlyList<MapsEntry> Covering(nint address, ulong length)
    {
        ulong start = (ulong)address;
        ulong end = start + length;
        var found = new List<MapsEntry>();
        foreach (string line in File.ReadLines("/proc/self/maps"))
        {
            MapsEntry? e = Parse(line);
            if (e is not null && e.Start < end && start < e.End)
                found.Add(e);
        }
        return found;
    }

    /// <summary>Parses one maps line; null when it is malformed.</summary>
    /// <param name="line">The line.</param>
    /// <returns>The entry.</returns>
    public static MapsEntry? Parse(string line)
    {
        string[] parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length < 5) return null;
        int dash = parts[0].IndexOf('-');
        if (dash <= 0) return null;
        if (!ulong.TryParse(parts[0].AsSpan(0, dash), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong s) ||
            !ulong.TryParse(parts[0].AsSpan(dash + 1), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out ulong e))
            return null;
        return new MapsEntry(s, e, parts[1], parts.Length > 5 ? parts[5].Trim() : "");
    }

    /// <summary>A short description of the entries (for failure messages).</summary>
    /// <param name="entries">Entries.</param>
    /// <returns>One line.</returns>
    public static string Describe(IEnumerable<MapsEntry> entries) =>
        string.Join(", ", entries.Select(e => $"{e.Start:x}-{e.End:x} {e.Permissions} {(e.Path.Length == 0 ? "(anonymous)" : e.Path)}"));
}
