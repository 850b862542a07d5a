using System.ComponentModel;
using System.Reflection;
using Microsoft.Extensions.Logging.Abstractions;
using Vism.Abstractions;
using Vism.Memory.File;
using Vism.Memory.Hugetlb;
using Vism.Testing;

namespace Vism.Memory.Tests;

public sealed class FileOptionsTests : IDisposable
{
    private readonly TempDir _dir = new("vism-opt");

    public void Dispose() => _dir.Dispose();

    private List<(string Key, string Message)> Check(FileMemoryOptions options, DeviceDescription? device = null) =>
        Validation.Run(options, device, Devices.Host(_dir.Path));

    [Fact]
    public void Defaults_AreValid_AndAsDocumented()
    {
        var options = new FileMemoryOptions();
        Assert.Equal("/dev/shm/vism", options.Directory);
        Assert.Equal("vism-", options.Prefix);
        Assert.Equal(0UL, options.Capacity);
        Assert.False(options.Persist);
        Assert.Empty(Check(options));
    }

    [Fact]
    public void RegionSizeThatIsNotAPageMultiple_IsADeviceError()
    {
        var errors = Check(new FileMemoryOptions { Directory = _dir.Path }, Devices.Make(regionSize: 6000));
        var (key, message) = Assert.Single(errors);
        Assert.Equal("device.region-size", key);
        Assert.Contains("8 KiB", message); // the nearest multiple it suggests
    }

    [Theory]
    [InlineData(5000UL, "not a multiple of the page size")]
    [InlineData(4096UL, "smaller than one region")]
    public void BadCapacity_IsRejectedNamingTheKey(ulong capacity, string why)
    {
        var (key, message) = Assert.Single(Check(new FileMemoryOptions { Directory = _dir.Path, Capacity = capacity }));
        Assert.Equal("capacity", key);
        Assert.Contains(why, message);
    }

    [Theory]
    [InlineData("a/b")]
    [InlineData("a\0b")]
    public void PrefixThatIsNotPartOfAFileName_IsRejected(string prefix)
    {
        var (key, _) = Assert.Single(Check(new FileMemoryOptions { Directory = _dir.Path, Prefix = prefix }));
        Assert.Equal("prefix", key);
    }

    [Fact]
    public void PrefixMakingNamesTooLong_IsRejected()
    {
        var (key, message) = Assert.Single(Check(new FileMemoryOptions { Directory = _dir.Path, Prefix = new string('p', 240) }));
        Assert.Equal("prefix", key);
        Assert.Contains("255", message);
    }

    [Fact]
    public void DirectoryProblems_AreRejectedNamingTheKey()
    {
        System.IO.File.WriteAllText(_dir["plain"], "");
        Directory.CreateSymbolicLink(_dir["link"], _dir.Path);
        Directory.CreateDirectory(_dir["other"]);
        Mono.Unix.Native.Syscall.chown(_dir["other"], 12345, 12345);

        foreach (var (directory, why) in new[]
        {
            ("", "must name a directory"),
            (_dir["plain"], "not a directory"),
            (_dir["plain"] + "/below", "cannot be created"),
            (_dir["link"], "symbolic link"),
            (_dir["other"], "belongs to uid 12345"),
        })
        {
            var (key, message) = Assert.Single(Check(new FileMemoryOptions { Directory = directory }));
            Assert.Equal("directory", key);
            Assert.Contains(why, message);
        }
    }

    [Theory]
    [InlineData("/proc/vism-regions", "would be created in /proc, which is on proc")]
    [InlineData("/proc/self/vism-regions", "which is on proc")]
    [InlineData("/sys/vism-regions", "would be created in /sys, which is on sysfs")]
    public void DirectoryOnAPseudoFileSystem_IsRejectedAtValidation_NamingTheKeyAndTheFileSystem(string directory, string why)
    {
        var (key, message) = Assert.Single(Check(new FileMemoryOptions { Directory = directory }));
        Assert.Equal("directory", key);
        Assert.Contains(why, message);
        Assert.Contains("not on tmpfs or a disk file system", message);
        // and the backend refuses it before creating anything
        var ex = Assert.Throws<ArgumentException>(() => new FileMemoryBackend(new FileMemoryOptions { Directory = directory },
            Devices.Make(), Devices.Host(), new Counters(), NullLogger<FileMemoryBackend>.Instance));
        Assert.Contains("directory: ", ex.Message);
    }

    [SkippableFact]
    public void DirectoryOnAReadOnlyMount_IsRejected_WhetherItExistsOrNot()
    {
        using PrivateMount ro = PrivateMount.Tmpfs(1 << 20, readOnly: true);
        Assert.Contains(Check(new FileMemoryOptions { Directory = ro.Path }), e => e.Key == "directory" && e.Message.Contains("is on a read-only mount"));
        Assert.Contains(Check(new FileMemoryOptions { Directory = ro.Path + "/sub" }), e => e.Key == "directory" && e.Message.Contains("which is on a read-only mount"));
    }

    [SkippableFact]
    public void DirectoryOnHugetlbfs_IsRejected_PointingToTheHugetlbPlugin()
    {
        using PrivateMount huge = PrivateMount.Hugetlbfs(2 << 20, 0);
        var (key, message) = Assert.Single(Check(new FileMemoryOptions { Directory = huge.Path }));
        Assert.Equal("directory", key);
        Assert.Contains($"kind = \"hugetlb\" with mount = \"{huge.Path}\"", message);
    }

    [Fact]
    public void DirectoryOnTmpfsOrADisk_IsAccepted()
    {
        Assert.Empty(Check(new FileMemoryOptions { Directory = "/dev/shm/vism-never-created-" + Guid.NewGuid().ToString("N") })); // tmpfs
        Assert.Empty(Check(new FileMemoryOptions { Directory = _dir.Path })); // /tmp: the machine's disk
    }

    [Fact]
    public void MissingDirectoryThatCanBeCreated_IsValid_AndTheBackendCreatesItPrivate()
    {
        var options = new FileMemoryOptions { Directory = _dir["a/b"] };
        Assert.Empty(Check(options));
        using var backend = new FileMemoryBackend(options, Devices.Make(), Devices.Host(), new Counters(), NullLogger<FileMemoryBackend>.Instance);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute,
                     System.IO.File.GetUnixFileMode(_dir["a/b"]));
    }

    [Fact]
    public void Backend_RefusesOptionsTheHostWouldReject()
    {
        var options = new FileMemoryOptions { Directory = _dir.Path, Capacity = 5000 };
        var ex = Assert.Throws<ArgumentException>(() =>
            new FileMemoryBackend(options, Devices.Make(), Devices.Host(), new Counters(), NullLogger<FileMemoryBackend>.Instance));
        Assert.Contains("capacity", ex.Message);
    }
}

public sealed class HugetlbOptionsTests
{
    private const ulong Page = 2UL << 20;

    [Fact]
    public void Defaults_AreAsDocumented()
    {
        var options = new HugetlbMemoryOptions();
        Assert.Equal(Page, options.PageSize);
        Assert.Equal("", options.Mount);
        Assert.Equal("vism-", options.Prefix);
        Assert.Equal(0UL, options.Capacity);
        Assert.Equal(HugePageClaim.Reserve, options.Claim);
    }

    [Fact]
    public void ClaimThatIsNotReserveOrFallocate_IsRejectedNamingTheKey()
    {
        var errors = Validation.Run(new HugetlbMemoryOptions { Claim = (HugePageClaim)7 }, Devices.Make(regionSize: Page));
        var (_, message) = Assert.Single(errors, e => e.Key == "claim");
        Assert.Contains("\"reserve\" or \"fallocate\"", message);
    }

    [SkippableFact]
    public void ValidOptions_PassWhenPagesAreReserved()
    {
        Machine.RequireHugePages(1);
        Assert.Empty(Validation.Run(new HugetlbMemoryOptions(), Devices.Make(regionSize: 4 << 20)));
    }

    [Fact]
    public void RegionSizeThatIsNotAHugePageMultiple_IsADeviceError()
    {
        var errors = Validation.Run(new HugetlbMemoryOptions(), Devices.Make(regionSize: 1 << 20));
        var (_, message) = Assert.Single(errors, e => e.Key == "device.region-size");
        Assert.Contains("2 MiB", message);
    }

    [Fact]
    public void PageSizeTheKernelDoesNotOffer_IsRejectedListingTheSizesItDoes()
    {
        var (key, message) = Assert.Single(Validation.Run(new HugetlbMemoryOptions { PageSize = 3 << 20 }, Devices.Make(regionSize: 6 << 20)));
        Assert.Equal("page-size", key);
        Assert.Contains("it offers 2 MiB", message);
    }

    [Fact]
    public void CapacityThatIsNotAHugePageMultiple_IsRejected()
    {
        var errors = Validation.Run(new HugetlbMemoryOptions { Capacity = 3 << 20 }, Devices.Make(regionSize: Page));
        Assert.Contains(errors, e => e.Key == "capacity" && e.Message.Contains("multiple of the page size 2 MiB"));
    }

    [SkippableFact]
    public void NoPagesOfThatSizeReserved_IsRejectedSayingHowToReserveThem()
    {
        const ulong GiB = 1UL << 30;
        string dir = "/sys/kernel/mm/hugepages/hugepages-1048576kB";
        Skip.IfNot(Directory.Exists(dir), "this kernel has no 1 GiB huge pages");
        Skip.If(System.IO.File.ReadAllText($"{dir}/nr_hugepages").Trim() != "0"
                || System.IO.File.ReadAllText($"{dir}/nr_overcommit_hugepages").Trim() != "0", "1 GiB huge pages are reserved on this machine");

        var errors = Validation.Run(new HugetlbMemoryOptions { PageSize = GiB }, Devices.Make(regionSize: GiB, maxRegions: 4));
        var (_, message) = Assert.Single(errors, e => e.Key == "page-size");
        Assert.Contains($"echo 4 > {dir}/nr_hugepages", message);
        Assert.Throws<ArgumentException>(() => new HugetlbMemoryBackend(new HugetlbMemoryOptions { PageSize = GiB },
            Devices.Make(regionSize: GiB), Devices.Host(), new Counters(), NullLogger<HugetlbMemoryBackend>.Instance));
    }

    [Fact]
    public void MountThatIsNotHugetlbfs_IsRejectedSayingHowToMountOne()
    {
        using var dir = new TempDir("vism-nothuge");
        var errors = Validation.Run(new HugetlbMemoryOptions { Mount = dir.Path }, Devices.Make(regionSize: Page));
        var (_, message) = Assert.Single(errors, e => e.Key == "mount");
        Assert.Contains("mount -t hugetlbfs -o pagesize=2M", message);
    }

    [SkippableFact]
    public void MountOfAnotherPageSize_IsRejected()
    {
        Skip.IfNot(Directory.Exists("/sys/kernel/mm/hugepages/hugepages-1048576kB"), "this kernel has no 1 GiB huge pages");
        using PrivateMount mount = PrivateMount.Hugetlbfs(Page, 0);
        var errors = Validation.Run(new HugetlbMemoryOptions { Mount = mount.Path, PageSize = 1UL << 30 }, Devices.Make(regionSize: 1UL << 30));
        var (_, message) = Assert.Single(errors, e => e.Key == "mount");
        Assert.Contains("has 2 MiB pages but page-size is 1 GiB", message);
    }
}

public sealed class PluginTests
{
    private sealed class Recorder : IVismPluginBuilder
    {
        public List<(string Kind, Type Backend, Type Options)> Memory { get; } = [];

        public IVismPluginBuilder AddTransport<TTransport, TOptions>(string kind, string summary)
            where TTransport : class, ITransport where TOptions : class, new() => throw new InvalidOperationException("not a transport plugin");

        public IVismPluginBuilder AddMemory<TBackend, TOptions>(string kind, string summary)
            where TBackend : class, IMemoryBackend where TOptions : class, new()
        {
            Assert.False(string.IsNullOrWhiteSpace(summary));
            Memory.Add((kind, typeof(TBackend), typeof(TOptions)));
            return this;
        }

        public IVismPluginBuilder AddEvents<TChannel, TOptions>(string kind, string summary)
            where TChannel : class, IEventChannel where TOptions : class, new() => throw new InvalidOperationException("not an events plugin");
    }

    [Theory]
    [InlineData(typeof(FileMemoryPlugin), "file", typeof(FileMemoryBackend), typeof(FileMemoryOptions))]
    [InlineData(typeof(HugetlbMemoryPlugin), "hugetlb", typeof(HugetlbMemoryBackend), typeof(HugetlbMemoryOptions))]
    public void Plugin_RegistersItsKind_AndCarriesTheContractVersion(Type plugin, string kind, Type backend, Type options)
    {
        var recorder = new Recorder();
        ((IVismPlugin)Activator.CreateInstance(plugin)!).Register(recorder);

        Assert.Equal([(kind, backend, options)], recorder.Memory);
        Assert.Equal(VismContract.Version, plugin.Assembly.GetCustomAttribute<VismPluginAttribute>()?.ContractVersion);
        Assert.Single(backend.GetConstructors()); // one constructor for DI to choose
        Assert.True(typeof(IValidatableOptions).IsAssignableFrom(options));
        foreach (PropertyInfo p in options.GetProperties().Where(p => p.CanWrite))
            Assert.False(string.IsNullOrWhiteSpace(p.GetCustomAttribute<DescriptionAttribute>()?.Description), $"{p.Name} has no description");
    }
}
