using BenchmarkDotNet.Running;

if (args is ["idle-cost", .. var rest])
    return Vism.Benchmarks.IdleCost.Run(rest);
BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
return 0;

public partial class Program;
