using Vism.Abstractions;

namespace Vism.Core.Registry;

/// <summary>One device's reference to a region: the device and the slot it occupies in its REGIONS window.</summary>
/// <param name="Device">The referencing device.</param>
/// <param name="Slot">The slot index (offset / region_size).</param>
internal readonly record struct RegionRef(IsmDevice Device, int Slot);

/// <summary>
/// A live ISM region in the host registry. Fields other than <see cref="Refs"/> are guarded by the
/// host's lock; <see cref="Refs"/> is copy-on-write so notify routing reads it without locking.
/// </summary>
internal sealed class Region(ulong token, IMemoryBlock block, ulong size, IsmDevice home, bool recovered)
{
    /// <summary>The token (never 0).</summary>
    public ulong Token { get; } = token;

    /// <summary>The backing memory.</summary>
    public IMemoryBlock Block { get; } = block;

    /// <summary>The backing's length (what every device maps).</summary>
    public ulong Length { get; } = block.Length;

    /// <summary>Bytes the allocator asked for (the block length for a recovered region).</summary>
    public ulong Size { get; } = size;

    /// <summary>The device whose memory backend owns <see cref="Block"/>; the block is released on its loop.</summary>
    public IsmDevice Home { get; } = home;

    /// <summary>Whether the region came from <see cref="IMemoryBackend.Recover"/>.</summary>
    public bool Recovered { get; } = recovered;

    /// <summary>The devid that holds MANAGE by default (0 for a recovered region nobody attached yet).</summary>
    public ulong OwnerDevId { get; private set; }

    /// <summary>The owner's own entry (kept out of <see cref="_entries"/>: most regions have no other).
    /// Entries keep the DENY_OTHER bit they were granted with: it belongs to the entry.</summary>
    private IsmPermissions _owner;

    /// <summary>Per-device entries other than the owner's; null until a GRANT names another device.</summary>
    private Dictionary<ulong, IsmPermissions>? _entries;

    /// <summary>The default entry (peer devid 0), DENY_OTHER bit included.</summary>
    private IsmPermissions _default = IsmPermissions.Read | IsmPermissions.Write | IsmPermissions.Attach;

    /// <summary>Entries (the default one included) that carry DENY_OTHER.</summary>
    private int _denyingEntries;

    /// <summary>The default entry (peer devid 0) without its DENY_OTHER bit.</summary>
    public IsmPermissions Default => _default & ~IsmPermissions.DenyOther;

    /// <summary>Whether devices without their own entry are denied attach: some entry (the default
    /// entry or a device's) carries VIRTIO_ISM_PERM_DENY_OTHER now.</summary>
    public bool DenyOther => _denyingEntries > 0;

    /// <summary>The first two devices that ever referenced the region (the pair rule; 0 = none yet).</summary>
    private ulong _peerA, _peerB;

    /// <summary>Current references; replaced, never mutated.</summary>
    public volatile RegionRef[] Refs = [];

    /// <summary>Set once the region left the registry.</summary>
    public bool Freed;

    /// <summary>Whether its backing outlives the host (<see cref="IMemoryBackend.PersistsRegions"/>):
    /// its owner and table are recorded, and only its owner's DETACH frees it.</summary>
    public bool Persistent { get; init; }

    /// <summary>The trust record to persist (call under the host's lock). Entries keep their
    /// DENY_OTHER bit; <see cref="RegionRecord.DenyOther"/> is the default entry's.</summary>
    public RegionRecord ToRecord() =>
        new(OwnerDevId, _owner, Default, (_default & IsmPermissions.DenyOther) != 0,
            _entries is null ? new Dictionary<ulong, IsmPermissions>() : new Dictionary<ulong, IsmPermissions>(_entries), _peerA, _peerB);

    /// <summary>Takes owner, table and pair from a persisted record (before the region is registered).</summary>
    /// <param name="record">The record.</param>
    public void Restore(RegionRecord record)
    {
        SetOwner(record.Owner, record.OwnerEntry);
        SetDefault(record.Default | (record.DenyOther ? IsmPermissions.DenyOther : IsmPermissions.None));
        foreach ((ulong devId, IsmPermissions p) in record.Entries)
            if (devId != record.Owner)
                SetEntry(devId, p);
        (_peerA, _peerB) = (record.PeerA, record.PeerB);
    }

    /// <summary>Makes <paramref name="devId"/> the owner with <paramref name="permissions"/> as its
    /// entry; the owner's entry always holds MANAGE.</summary>
    /// <param name="devId">The owner.</param>
    /// <param name="permissions">Its entry.</param>
    public void SetOwner(ulong devId, IsmPermissions permissions)
    {
        if (OwnerDevId != 0)
            Replace(ref _owner, IsmPermissions.None);
        OwnerDevId = devId;
        Replace(ref _owner, permissions | IsmPermissions.Manage);
    }

    /// <summary>Sets the default entry (peer devid 0), DENY_OTHER bit included.</summary>
    /// <param name="permissions">The entry.</param>
    public void SetDefault(IsmPermissions permissions) => Replace(ref _default, permissions);

    /// <summary>Sets the per-device entry of <paramref name="devId"/> (not 0), DENY_OTHER bit
    /// included. The owner's entry keeps MANAGE whatever it is set to: the allocating device
    /// never locks itself out.</summary>
    /// <param name="devId">A devid.</param>
    /// <param name="permissions">Its entry.</param>
    public void SetEntry(ulong devId, IsmPermissions permissions)
    {
        if (devId == OwnerDevId)
        {
            Replace(ref _owner, permissions | IsmPermissions.Manage);
            return;
        }
        _entries ??= [];
        _entries.TryGetValue(devId, out IsmPermissions old);
        Replace(ref old, permissions);
        _entries[devId] = old;
    }

    /// <summary>The permissions that apply to <paramref name="devId"/>.</summary>
    /// <param name="devId">A devid.</param>
    /// <returns>Its own entry, else the default entry (without ATTACH while some entry carries
    /// DENY_OTHER); never with the DENY_OTHER bit itself.</returns>
    public IsmPermissions EffectiveFor(ulong devId)
    {
        if (devId == OwnerDevId && devId != 0)
            return _owner & ~IsmPermissions.DenyOther;
        if (_entries is not null && _entries.TryGetValue(devId, out IsmPermissions own))
            return own & ~IsmPermissions.DenyOther;
        return DenyOther ? Default & ~IsmPermissions.Attach : Default;
    }

    /// <summary>Whether a device holding <paramref name="permissions"/> may keep (or get) a mapping of
    /// the region: it needs ATTACH and READ (every mapping is readable: WRITE alone cannot be
    /// honoured exactly). WRITE makes the mapping writable.</summary>
    /// <param name="permissions">Effective permissions.</param>
    public static bool AllowsMapping(IsmPermissions permissions) =>
        (permissions & (IsmPermissions.Attach | IsmPermissions.Read)) == (IsmPermissions.Attach | IsmPermissions.Read);

    private void Replace(ref IsmPermissions entry, IsmPermissions value)
    {
        if ((entry & IsmPermissions.DenyOther) != 0) _denyingEntries--;
        if ((value & IsmPermissions.DenyOther) != 0) _denyingEntries++;
        entry = value;
    }

    /// <summary>Whether <paramref name="devId"/> may reference the region under the pair rule:
    /// it did before, or fewer than two devices ever did.</summary>
    /// <param name="devId">A devid.</param>
    public bool PairAllows(ulong devId) => _peerB == 0 || devId == _peerA || devId == _peerB;

    /// <summary>Records that <paramref name="devId"/> references the region (for the pair rule).</summary>
    /// <param name="devId">A devid.</param>
    public void AddPeer(ulong devId)
    {
        if (_peerA == 0)
            _peerA = devId;
        else if (_peerB == 0 && devId != _peerA)
            _peerB = devId;
    }

    /// <summary>Whether <paramref name="device"/> references the region now.</summary>
    /// <param name="device">A device.</param>
    /// <returns>True when one of <see cref="Refs"/> is it.</returns>
    public bool IsReferencedBy(IsmDevice device)
    {
        foreach (RegionRef r in Refs)
            if (ReferenceEquals(r.Device, device))
                return true;
        return false;
    }
}
