using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Vism.Abstractions;
using Vism.Core.Registry;

namespace Vism.Core;

/// <summary>How many devices may share one region.</summary>
public enum SharingMode
{
    /// <summary>The v1 rule: a region is shared by at most two devices for its whole life; once a
    /// device detached, only it may attach again.</summary>
    Pair,

    /// <summary>Any number of devices may attach (the cover letter's many-peer use).</summary>
    Multi,
}

/// <summary>Host-wide settings.</summary>
public sealed record IsmHostOptions
{
    /// <summary>The gid to report; null derives it from /etc/machine-id (stable on a host, different between hosts).</summary>
    public ulong? Gid { get; init; }

    /// <summary>The sharing rule for every region of the host.</summary>
    public SharingMode Sharing { get; init; } = SharingMode.Pair;

    /// <summary>The machine-id file the gid is derived from (tests point it elsewhere).</summary>
    public string MachineIdPath { get; init; } = "/etc/machine-id";

    /// <summary>The host's state directory. When set, the host's identity is recorded there
    /// (<see cref="HostIdentity"/>): the gid is derived from the machine id and the directory's
    /// host id (stable across restarts, different for another host on the same machine) and every
    /// device keeps its devid across restarts. Null: gid from the machine id alone, devids 1, 2, ...
    /// in order of registration (tests).</summary>
    public string? StateDirectory { get; init; }
}

/// <summary>
/// The registry shared by every device of one vism process: gid, devid allocation, region tokens,
/// regions with their references and permissions. Thread-safe; every lock is short and nothing
/// blocking happens under it (memory is returned on the owning device's loop).
/// </summary>
public sealed class IsmHost : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<ulong, Region> _regions = new();
    private readonly Dictionary<ulong, IsmDevice> _devices = new();
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private readonly TokenSequence _tokens = new();
    private readonly ILoggerFactory _logs;
    private readonly ILogger _log;
    private readonly HostIdentity? _identity;
    private readonly RegionRecords? _records;
    private ulong _lastDevId;
    private bool _disposed;
    private volatile bool _shuttingDown;

    /// <summary>Creates the registry.</summary>
    /// <param name="options">Host settings.</param>
    /// <param name="logs">Logger factory; each device logs under <c>Vism.Core.IsmDevice</c>.</param>
    public IsmHost(IsmHostOptions options, ILoggerFactory logs)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(logs);
        _logs = logs;
        _log = logs.CreateLogger<IsmHost>();
        Sharing = options.Sharing;
        if (options.StateDirectory is not null)
        {
            _identity = HostIdentity.Open(options.StateDirectory, _log);
            _records = new RegionRecords(options.StateDirectory, _log);
        }
        string? machineId = options.Gid is null ? ReadMachineId(options.MachineIdPath, _log) : null;
        Gid = options.Gid ?? (_identity is not null ? _identity.Gid(machineId!) : DeriveGid(machineId!));
    }

    /// <summary>The host's gid.</summary>
    public ulong Gid { get; }

    /// <summary>The sharing rule.</summary>
    public SharingMode Sharing { get; }

    /// <summary>Live regions (allocated or recovered, not yet freed).</summary>
    public int RegionCount
    {
        get { lock (_lock) return _regions.Count; }
    }

    /// <summary>Registered devices.</summary>
    public int DeviceCount
    {
        get { lock (_lock) return _devices.Count; }
    }

    /// <summary>
    /// Registers a device (its devid is allocated here: unique in the host, never 0, and with a state
    /// directory the one recorded for its name) and registers the
    /// regions its memory backend recovered under their tokens. Call from any thread except another
    /// device's loop (recovery runs on the device's loop and is waited for).
    /// </summary>
    /// <param name="description">The device's layout.</param>
    /// <param name="loop">The loop that will own the device.</param>
    /// <param name="memory">Its memory backend.</param>
    /// <param name="events">Its event channel, or null when the device offers no event feature.</param>
    /// <param name="counters">Its counters.</param>
    /// <param name="limits">Its share of the loop and in-flight limits; the defaults when null.</param>
    /// <returns>The device, not yet connected to a transport.</returns>
    public IsmDevice AddDevice(DeviceDescription description, IDeviceLoop loop, IMemoryBackend memory,
        IEventChannel? events, IDeviceCounters counters, DeviceLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(description);
        ArgumentNullException.ThrowIfNull(loop);
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(counters);
        IsmDevice device;
        ulong? recorded = _identity?.DevIdFor(description.Name); // file I/O: outside the lock
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_names.Add(description.Name))
                throw new ArgumentException($"a device named '{description.Name}' is already registered", nameof(description));
            ulong devId = recorded ?? ++_lastDevId;
            if (_devices.ContainsKey(devId))
            {
                _names.Remove(description.Name);
                throw new InvalidOperationException($"devid {devId} of device '{description.Name}' is already in use");
            }
            device = new IsmDevice(this, devId, description, loop, memory, events, counters, _logs.CreateLogger<IsmDevice>(), limits);
            _devices.Add(devId, device);
        }
        IReadOnlyList<RecoveredBlock> recovered;
        try
        {
            recovered = RunOn(loop, memory.Recover);
        }
        catch (Exception ex)
        {
            _log.LogError(ex, "device {Name}: its memory backend failed to recover persisted regions; none recovered", description.Name);
            counters.Increment("err.recover.failed");
            recovered = [];
        }
        foreach (RecoveredBlock r in recovered)
            RegisterRecovered(device, r);
        RunOn(loop, () => { device.RefreshMemoryUsage(); return true; });
        _log.LogInformation("device {Name}: devid {DevId}, {Regions} region slots of {RegionSize} bytes, {Recovered} recovered regions",
            description.Name, device.DevId, description.MaxRegions, description.RegionSize, recovered.Count);
        return device;
    }

    /// <summary>Unregisters a device: resets it (releasing every region it references) and forgets
    /// the recovered regions of its backend that nobody attached (their persisted backing stays).
    /// Call from the device's loop or a thread that is no loop.</summary>
    /// <param name="device">A device of this host.</param>
    /// <exception cref="TimeoutException">When the device's loop does not answer within 30 s.</exception>
    public void RemoveDevice(IsmDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        if (!ReferenceEquals(device.Host, this))
            throw new ArgumentException("the device belongs to another host", nameof(device));
        RunOn(device.Loop, () => { device.Shutdown(); return true; });
        List<Region> orphans = [];
        lock (_lock)
        {
            if (!_devices.Remove(device.DevId))
                return;
            _names.Remove(device.Description.Name);
            foreach (Region r in _regions.Values)
                if (ReferenceEquals(r.Home, device) && r.Refs.Length == 0)
                    orphans.Add(r);
            foreach (Region r in orphans)
            {
                _regions.Remove(r.Token);
                r.Freed = true;
            }
        }
        foreach (Region r in orphans)
            device.Loop.Post(() => r.Block.Dispose());
        _log.LogInformation("device {Name} (devid {DevId}) removed", device.Description.Name, device.DevId);
    }

    /// <summary>What <c>vism status</c> shows: devices, regions, references, counters, memory use.
    /// Safe from any thread. Tokens are not shown in full (anyone holding one can attach).</summary>
    /// <returns>A copy of the registry's state.</returns>
    public HostSnapshot Snapshot()
    {
        lock (_lock)
        {
            var devices = _devices.Values.OrderBy(d => d.DevId).Select(d => d.Snapshot()).ToList();
            var regions = _regions.Values
                .Select(r => new RegionSnapshot(
                    TokenHint: $"{r.Token >> 48:x4}…",
                    Size: r.Size,
                    Length: r.Length,
                    OwnerDevId: r.OwnerDevId,
                    HomeDevId: r.Home.DevId,
                    Recovered: r.Recovered,
                    References: r.Refs.Select(x => new RegionReference(x.Device.DevId, (ulong)x.Slot * x.Device.Description.RegionSize)).ToList()))
                .OrderBy(r => r.HomeDevId).ThenBy(r => r.References.Count == 0 ? ulong.MaxValue : r.References[0].Offset)
                .ToList();
            return new HostSnapshot(Gid, Sharing, devices, regions);
        }
    }

    /// <summary>Derives a gid from a machine id: the first 8 bytes of HMAC-SHA256 keyed with a vism
    /// constant, so the gid is stable on a host, differs between hosts and does not reveal the id.</summary>
    /// <param name="machineId">The machine id text.</param>
    /// <returns>A non-zero gid.</returns>
    public static ulong DeriveGid(string machineId)
    {
        byte[] mac = HMACSHA256.HashData(Encoding.UTF8.GetBytes("vism gid v1"), Encoding.UTF8.GetBytes(machineId.Trim()));
        ulong gid = BitConverter.ToUInt64(mac, 0);
        return gid == 0 ? 1 : gid;
    }

    private static string ReadMachineId(string path, ILogger log)
    {
        try
        {
            string id = File.ReadAllText(path).Trim();
            if (id.Length > 0)
                return id;
            log.LogWarning("{Path} is empty; the gid is derived from the host name instead", path);
        }
        catch (IOException ex)
        {
            log.LogWarning("{Path} cannot be read ({Error}); the gid is derived from the host name instead", path, ex.Message);
        }
        catch (UnauthorizedAccessException ex)
        {
            log.LogWarning("{Path} cannot be read ({Error}); the gid is derived from the host name instead", path, ex.Message);
        }
        return "hostname:" + Environment.MachineName;
    }

    /// <summary>Whether <see cref="BeginShutdown"/> was called.</summary>
    public bool ShuttingDown => _shuttingDown;

    /// <summary>
    /// The host is stopping. From now on a region whose last reference goes (transports
    /// disconnecting, devices being removed) is only closed, never released: a persistent memory
    /// backend keeps its contents for the next start, and every other backend's memory goes back
    /// to the system when its descriptors close. Call it before stopping transports.
    /// <see cref="Dispose"/> calls it too.
    /// </summary>
    public void BeginShutdown() => _shuttingDown = true;

    /// <summary>Shuts down (<see cref="BeginShutdown"/>), removes every device and disposes the token key.</summary>
    public void Dispose()
    {
        BeginShutdown();
        List<IsmDevice> devices;
        lock (_lock)
        {
            if (_disposed) return;
            devices = [.. _devices.Values];
        }
        foreach (IsmDevice d in devices)
        {
            try
            {
                RemoveDevice(d);
            }
            catch (TimeoutException)
            {
                _log.LogError("device {Name}: its loop did not answer within {Timeout}; it is abandoned", d.Description.Name, LoopTimeout);
            }
        }
        lock (_lock)
        {
            _disposed = true;
            _tokens.Dispose();
        }
    }

    /// <summary>How long a caller off the loop waits for the loop (a loop that stopped never answers).</summary>
    private static readonly TimeSpan LoopTimeout = TimeSpan.FromSeconds(30);

    private static T RunOn<T>(IDeviceLoop loop, Func<T> work) =>
        loop.IsOnLoop ? work() : loop.InvokeAsync(work).WaitAsync(LoopTimeout).GetAwaiter().GetResult();

    // ---- registry operations, called by devices on their own loops ----

    /// <summary>A fresh token that no live region uses.</summary>
    internal ulong NewToken()
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            ulong token;
            do token = _tokens.Next();
            while (_regions.ContainsKey(token));
            return token;
        }
    }

    private void RegisterRecovered(IsmDevice device, RecoveredBlock recovered)
    {
        var region = new Region(recovered.Token, recovered.Block, recovered.Block.Length, device, recovered: true) { Persistent = _records is not null };
        string? problem = null, counter = "err.recover.bad-token";
        if (recovered.Token == 0)
            problem = "its token is 0";
        else if (_records is not null)
        {
            // Only what the record allows: its owner, its table, its pair. Without one nobody can be
            // trusted with it, so it is not adopted (its files stay for an administrator).
            if (_records.TryRead(recovered.Token, out string? why) is { } record)
                region.Restore(record);
            else
                (problem, counter) = (why, "err.recover.no-record");
        }
        if (problem is null)
            lock (_lock)
            {
                if (_regions.ContainsKey(recovered.Token))
                    problem = "another live region has its token";
                else
                    _regions.Add(recovered.Token, region);
            }
        if (problem is null)
            return;
        _log.LogError("device {Name}: a recovered region is ignored because {Problem}", device.Description.Name, problem);
        device.Counters.Increment(counter);
        device.Loop.Post(() => recovered.Block.Dispose());
    }

    /// <summary>Registers a region just allocated by <paramref name="owner"/> at <paramref name="slot"/>.</summary>
    internal Region CreateRegion(IsmDevice owner, int slot, ulong token, IMemoryBlock block, ulong size)
    {
        var region = new Region(token, block, size, owner, recovered: false) { Persistent = _records is not null && owner.PersistsRegions };
        region.SetOwner(owner.DevId, IsmPermissions.Read | IsmPermissions.Write | IsmPermissions.Attach | IsmPermissions.Manage);
        region.AddPeer(owner.DevId);
        region.Refs = [new RegionRef(owner, slot)];
        RegionRecord? record;
        lock (_lock)
        {
            _regions.Add(token, region);
            record = region.Persistent ? region.ToRecord() : null;
        }
        if (record is not null)
            _records!.TryWrite(token, record);
        return region;
    }

    /// <summary>Adds a reference from <paramref name="device"/> at <paramref name="slot"/> to the
    /// region with <paramref name="token"/>, after checking existence, permissions, size and the
    /// sharing rule.</summary>
    /// <returns>Null on success, otherwise the refusal (<c>attach.*</c>).</returns>
    internal Refusal? TryAttach(IsmDevice device, int slot, ulong token, out Region? region, out bool writable)
    {
        writable = false;
        RegionRecord? record;
        lock (_lock)
        {
            if (!_regions.TryGetValue(token, out region))
                return new Refusal("attach.unknown-token", "no region has this token");
            if (region.IsReferencedBy(device))
                return new Refusal("attach.already-attached", "this device already references the region");
            if (region.Length > device.Description.RegionSize)
                return new Refusal("attach.region-too-large", $"the region is larger than this device's region_size {device.Description.RegionSize}");
            IsmPermissions perms = region.EffectiveFor(device.DevId);
            if ((perms & IsmPermissions.Attach) == 0)
                return new Refusal("attach.denied", "the region's permissions do not let this device attach");
            if ((perms & IsmPermissions.Read) == 0)
                return new Refusal("attach.no-access", "the region's permissions do not give this device READ (every mapping is readable, so WRITE alone cannot be granted exactly)");
            if (Sharing == SharingMode.Pair && !region.PairAllows(device.DevId))
                return new Refusal("attach.pair-taken", "the region is already shared by two other devices (sharing = pair)");
            writable = (perms & IsmPermissions.Write) != 0;
            region.AddPeer(device.DevId);
            if (region.Recovered && region.OwnerDevId == 0)
                region.SetOwner(device.DevId, perms | IsmPermissions.Manage); // no records kept (no state directory): its first attacher manages it
            region.Refs = [.. region.Refs, new RegionRef(device, slot)];
            record = region.Persistent ? region.ToRecord() : null;
        }
        if (record is not null)
            _records!.TryWrite(token, record); // the pair may have changed
        return null;
    }

    /// <summary>Drops the reference of <paramref name="device"/> at <paramref name="slot"/>; frees
    /// the region (on its home device's loop) when it was the last one, except that a persistent
    /// region is freed only by its owner's DETACH (<paramref name="detach"/>): a non-owner's DETACH,
    /// a reset or a dead VMM leaves it registered, unreferenced, for its owner to attach again.</summary>
    internal void Release(Region region, IsmDevice device, int slot, bool detach)
    {
        bool free;
        lock (_lock)
        {
            RegionRef[] refs = region.Refs;
            int at = Array.IndexOf(refs, new RegionRef(device, slot));
            if (at < 0)
                return;
            region.Refs = refs.Length == 1 ? [] : [.. refs[..at], .. refs[(at + 1)..]];
            free = region.Refs.Length == 0 && !region.Freed
                && (!region.Persistent || (detach && device.DevId == region.OwnerDevId && !_shuttingDown));
            if (free)
            {
                region.Freed = true;
                _regions.Remove(region.Token);
            }
        }
        if (!free)
            return;
        if (region.Persistent)
            _records!.Delete(region.Token);
        region.Home.FreeBlock(region.Block);
    }

    /// <summary>GRANT: sets the default entry (<paramref name="peer"/> 0) or a per-device entry,
    /// DENY_OTHER bit included (it belongs to that entry). Every device that references the region
    /// is then told, so that the change reaches live attachments (<see cref="IsmDevice.PermissionsChanged"/>).</summary>
    /// <returns>Null on success, otherwise the refusal (<c>grant.*</c>).</returns>
    internal Refusal? TryGrant(Region region, IsmDevice device, ulong peer, IsmPermissions permissions)
    {
        RegionRef[] refs;
        RegionRecord? record = null;
        lock (_lock)
        {
            if ((region.EffectiveFor(device.DevId) & IsmPermissions.Manage) == 0)
                return new Refusal("grant.denied", "this device lacks MANAGE on the region");
            if (peer == 0)
                region.SetDefault(permissions);
            else
                region.SetEntry(peer, permissions);
            refs = region.Refs;
            if (region.Persistent)
                record = region.ToRecord();
        }
        if (record is not null)
            _records!.TryWrite(region.Token, record);
        foreach (RegionRef r in refs)
            r.Device.PermissionsChanged(region);
        return null;
    }

    /// <summary>The permissions <paramref name="devId"/> has on <paramref name="region"/> now.</summary>
    internal IsmPermissions PermissionsOf(Region region, ulong devId)
    {
        lock (_lock)
            return region.EffectiveFor(devId);
    }
}

/// <summary>The host as <c>vism status</c> shows it.</summary>
/// <param name="Gid">The gid.</param>
/// <param name="Sharing">The sharing rule.</param>
/// <param name="Devices">Every device, by devid.</param>
/// <param name="Regions">Every live region.</param>
public sealed record HostSnapshot(ulong Gid, SharingMode Sharing, IReadOnlyList<DeviceSnapshot> Devices, IReadOnlyList<RegionSnapshot> Regions);

/// <summary>One device in a <see cref="HostSnapshot"/>.</summary>
/// <param name="Name">Its name.</param>
/// <param name="DevId">Its devid.</param>
/// <param name="Status">Its virtio status.</param>
/// <param name="NegotiatedFeatures">Features the driver accepted (0 before FEATURES_OK).</param>
/// <param name="Connected">Whether a transport connection is up.</param>
/// <param name="RegionsInUse">Slots holding a region.</param>
/// <param name="MaxRegions">Slots in its REGIONS window.</param>
/// <param name="Memory">Its memory backend's accounting (as of the last change).</param>
/// <param name="Counters">Its counters by name.</param>
public sealed record DeviceSnapshot(string Name, ulong DevId, DeviceStatus Status, ulong NegotiatedFeatures, bool Connected,
    int RegionsInUse, int MaxRegions, MemoryUsage Memory, IReadOnlyDictionary<string, long> Counters);

/// <summary>One region in a <see cref="HostSnapshot"/>.</summary>
/// <param name="TokenHint">The token's first 16 bits, enough to tell regions apart in logs.</param>
/// <param name="Size">Requested size in bytes.</param>
/// <param name="Length">Backing length in bytes.</param>
/// <param name="OwnerDevId">The allocating device (0 for a recovered region nobody attached).</param>
/// <param name="HomeDevId">The device whose memory backend holds it.</param>
/// <param name="Recovered">Whether it was recovered from persisted state.</param>
/// <param name="References">Each referencing device with the offset it sees the region at.</param>
public sealed record RegionSnapshot(string TokenHint, ulong Size, ulong Length, ulong OwnerDevId, ulong HomeDevId, bool Recovered,
    IReadOnlyList<RegionReference> References);

/// <summary>A device's reference to a region.</summary>
/// <param name="DevId">The device.</param>
/// <param name="Offset">The region's offset in that device's REGIONS window.</param>
public readonly record struct RegionReference(ulong DevId, ulong Offset);
