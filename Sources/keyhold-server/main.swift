import KeyholdServer

await KeyholdServerMain.run()
